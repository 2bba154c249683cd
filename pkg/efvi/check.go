package efvi

import "encoding/binary"

// checkIPv4Fast is the default discard check of an untagged IPv4 frame with
// a 20-byte header, the common case, without the generic parser: the same
// verdicts as check (a fuzz test holds them equal). ok is false when the
// frame is not that case, or the mask asks for more than the IPv4 header
// and length checks.
func (v *VI) checkIPv4Fast(b []byte) (dt DiscardType, bad, ok bool) {
	if v.discards&DiscardL4CsumErr != 0 || len(b) < 34 || b[12] != 0x08 || b[13] != 0x00 || b[14] != 0x45 {
		return 0, false, false
	}
	total := int(binary.BigEndian.Uint16(b[16:]))
	if total < 20 {
		return 0, false, false // malformed: the generic parser decides
	}
	if 14+total > len(b) && v.discards&DiscardEthLenErr != 0 {
		v.st.RxDiscardTrunc++
		return DiscardTrunc, true, true
	}
	if v.discards&DiscardL3CsumErr != 0 && !ipv4HeaderSumOK((*[20]byte)(b[14:34])) {
		v.st.RxDiscardCsum++
		return DiscardCsumBad, true, true
	}
	return 0, false, true
}

// ipv4HeaderSumOK reports whether a 20-byte IPv4 header's checksum is
// right: its one's-complement sum is 0xffff.
func ipv4HeaderSumOK(h *[20]byte) bool {
	var s uint32
	for i := 0; i < 20; i += 2 {
		s += uint32(h[i])<<8 | uint32(h[i+1])
	}
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return s == 0xffff
}
