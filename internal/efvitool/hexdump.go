package efvitool

const hexDigits = "0123456789abcdef"

// AppendHexdump appends a hex dump of b to dst in the style of
// `hexdump -C` without the ASCII column: 16 bytes a line, each line starting
// with its offset. It allocates only if dst lacks capacity.
func AppendHexdump(dst, b []byte) []byte {
	for off := 0; off < len(b); off += 16 {
		dst = append(dst, ' ', ' ')
		for shift := 12; shift >= 0; shift -= 4 {
			dst = append(dst, hexDigits[(off>>shift)&0xf])
		}
		for i := off; i < off+16 && i < len(b); i++ {
			if i == off+8 {
				dst = append(dst, ' ')
			}
			dst = append(dst, ' ', hexDigits[b[i]>>4], hexDigits[b[i]&0xf])
		}
		dst = append(dst, '\n')
	}
	return dst
}
