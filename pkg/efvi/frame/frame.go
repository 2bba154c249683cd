// Package frame builds and parses the Ethernet, 802.1Q, IPv4, IPv6 and UDP
// headers an ef_vi application writes into its packet buffers, with Internet
// checksums. It plays the part of Onload's ci_*_hdr_init helpers
// (src/lib/citools/ippacket.c) for Go. Everything writes into or reads from
// a caller's buffer and makes no allocation, so it can run per packet.
//
// Builders return the number of bytes written and ErrShort when the buffer
// is too small; they never panic on a short buffer.
package frame

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Header lengths.
const (
	EthHdrLen  = 14
	VLANTagLen = 4
	IPv4HdrLen = 20 // without options
	IPv6HdrLen = 40
	UDPHdrLen  = 8
	TCPHdrLen  = 20 // without options
)

// EtherTypes and IP protocols.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeARP  uint16 = 0x0806
	EtherTypeVLAN uint16 = 0x8100
	EtherTypeQinQ uint16 = 0x88a8
	EtherTypeIPv6 uint16 = 0x86dd
	ProtoICMP     uint8  = 1
	ProtoTCP      uint8  = 6
	ProtoUDP      uint8  = 17
)

// Errors (sentinels, so the hot path does not allocate).
var (
	ErrShort     = errors.New("frame: buffer too short for the headers")
	ErrTruncated = errors.New("frame: frame shorter than its IP header says (truncated)")
	ErrHeader    = errors.New("frame: malformed IP header")
	ErrNotIP     = errors.New("frame: not IPv4/IPv6")
	ErrAddr      = errors.New("frame: address family does not match")
	ErrTooBig    = errors.New("frame: payload too large for the IP length fields")
)

// MAC is an Ethernet address.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Sum adds b to a running ones'-complement sum (not folded, not inverted).
// An odd trailing byte is padded with zero, as RFC 1071 says.
func Sum(b []byte, s uint32) uint32 {
	// Ones'-complement addition is associative across word sizes: add
	// 32-bit big-endian words into a 64-bit accumulator, then fold.
	acc := uint64(s)
	i := 0
	for ; i+32 <= len(b); i += 32 {
		x0 := binary.BigEndian.Uint64(b[i:])
		x1 := binary.BigEndian.Uint64(b[i+8:])
		x2 := binary.BigEndian.Uint64(b[i+16:])
		x3 := binary.BigEndian.Uint64(b[i+24:])
		acc += x0>>32 + x0&0xffffffff + x1>>32 + x1&0xffffffff +
			x2>>32 + x2&0xffffffff + x3>>32 + x3&0xffffffff
	}
	for ; i+4 <= len(b); i += 4 {
		acc += uint64(binary.BigEndian.Uint32(b[i:]))
	}
	if i+2 <= len(b) {
		acc += uint64(binary.BigEndian.Uint16(b[i:]))
		i += 2
	}
	if i < len(b) {
		acc += uint64(b[i]) << 8
	}
	for acc > 0xffffffff {
		acc = acc&0xffffffff + acc>>32
	}
	// Fold to 16 bits without overflowing uint32 for callers that add more.
	for acc > 0xffff {
		acc = acc&0xffff + acc>>16
	}
	return uint32(acc)
}

// Fold folds a running sum to 16 bits and inverts it: the checksum field.
func Fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// Checksum is Fold(Sum(b, 0)): the Internet checksum of b.
func Checksum(b []byte) uint16 { return Fold(Sum(b, 0)) }

// PutEth writes an Ethernet header.
func PutEth(b []byte, dst, src MAC, etherType uint16) (int, error) {
	if len(b) < EthHdrLen {
		return 0, ErrShort
	}
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:], etherType)
	return EthHdrLen, nil
}

// PutEthVLAN writes an Ethernet header with one 802.1Q tag (vid 0..4095,
// prio 0..7).
func PutEthVLAN(b []byte, dst, src MAC, vid uint16, prio uint8, etherType uint16) (int, error) {
	if len(b) < EthHdrLen+VLANTagLen {
		return 0, ErrShort
	}
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:], EtherTypeVLAN)
	binary.BigEndian.PutUint16(b[14:], uint16(prio&7)<<13|vid&0x0fff)
	binary.BigEndian.PutUint16(b[16:], etherType)
	return EthHdrLen + VLANTagLen, nil
}

// IPv4 describes an IPv4 header without options.
type IPv4 struct {
	Src, Dst   [4]byte
	Proto      uint8
	TTL        uint8 // 0 means 64
	TOS        uint8
	ID         uint16
	DontFrag   bool
	PayloadLen int // bytes after the IP header
}

// PutIPv4 writes a 20-byte IPv4 header with its checksum.
func PutIPv4(b []byte, h *IPv4) (int, error) {
	if len(b) < IPv4HdrLen {
		return 0, ErrShort
	}
	if h.PayloadLen < 0 || h.PayloadLen > 0xffff-IPv4HdrLen {
		return 0, ErrTooBig
	}
	ttl := h.TTL
	if ttl == 0 {
		ttl = 64
	}
	b[0] = 0x45
	b[1] = h.TOS
	binary.BigEndian.PutUint16(b[2:], uint16(IPv4HdrLen+h.PayloadLen))
	binary.BigEndian.PutUint16(b[4:], h.ID)
	var frag uint16
	if h.DontFrag {
		frag = 0x4000
	}
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = ttl
	b[9] = h.Proto
	b[10], b[11] = 0, 0
	copy(b[12:16], h.Src[:])
	copy(b[16:20], h.Dst[:])
	binary.BigEndian.PutUint16(b[10:], Checksum(b[:IPv4HdrLen]))
	return IPv4HdrLen, nil
}

// IPv6 describes an IPv6 header without extension headers.
type IPv6 struct {
	Src, Dst     [16]byte
	NextHeader   uint8
	HopLimit     uint8 // 0 means 64
	TrafficClass uint8
	FlowLabel    uint32
	PayloadLen   int
}

// PutIPv6 writes a 40-byte IPv6 header.
func PutIPv6(b []byte, h *IPv6) (int, error) {
	if len(b) < IPv6HdrLen {
		return 0, ErrShort
	}
	if h.PayloadLen < 0 || h.PayloadLen > 0xffff {
		return 0, ErrTooBig
	}
	hl := h.HopLimit
	if hl == 0 {
		hl = 64
	}
	binary.BigEndian.PutUint32(b[0:], 6<<28|uint32(h.TrafficClass)<<20|h.FlowLabel&0xfffff)
	binary.BigEndian.PutUint16(b[4:], uint16(h.PayloadLen))
	b[6] = h.NextHeader
	b[7] = hl
	copy(b[8:24], h.Src[:])
	copy(b[24:40], h.Dst[:])
	return IPv6HdrLen, nil
}

// PutUDP writes a UDP header for payloadLen bytes of payload, checksum 0
// (fill it with SetUDPChecksum4/6 once the payload is in place).
func PutUDP(b []byte, srcPort, dstPort uint16, payloadLen int) (int, error) {
	if len(b) < UDPHdrLen {
		return 0, ErrShort
	}
	if payloadLen < 0 || payloadLen > 0xffff-UDPHdrLen {
		return 0, ErrTooBig
	}
	binary.BigEndian.PutUint16(b[0:], srcPort)
	binary.BigEndian.PutUint16(b[2:], dstPort)
	binary.BigEndian.PutUint16(b[4:], uint16(UDPHdrLen+payloadLen))
	b[6], b[7] = 0, 0
	return UDPHdrLen, nil
}

func pseudo4(ip []byte, proto uint8, l4len int) uint32 {
	s := Sum(ip[12:20], 0)
	return s + uint32(proto) + uint32(l4len)
}

func pseudo6(ip []byte, proto uint8, l4len int) uint32 {
	s := Sum(ip[8:40], 0)
	return s + uint32(proto) + uint32(l4len>>16) + uint32(l4len&0xffff)
}

// L4Checksum4 computes the UDP/TCP checksum of seg (header with a zero
// checksum field, plus payload) under the IPv4 header ip.
func L4Checksum4(ip, seg []byte, proto uint8) uint16 {
	c := Fold(Sum(seg, pseudo4(ip, proto, len(seg))))
	if c == 0 && proto == ProtoUDP {
		c = 0xffff
	}
	return c
}

// L4Checksum6 is L4Checksum4 for IPv6.
func L4Checksum6(ip, seg []byte, proto uint8) uint16 {
	c := Fold(Sum(seg, pseudo6(ip, proto, len(seg))))
	if c == 0 && proto == ProtoUDP {
		c = 0xffff
	}
	return c
}

// SetUDPChecksum4 fills the checksum of the UDP segment seg under IPv4 ip.
func SetUDPChecksum4(ip, seg []byte) {
	seg[6], seg[7] = 0, 0
	binary.BigEndian.PutUint16(seg[6:], L4Checksum4(ip, seg, ProtoUDP))
}

// SetUDPChecksum6 fills the checksum of the UDP segment seg under IPv6 ip.
func SetUDPChecksum6(ip, seg []byte) {
	seg[6], seg[7] = 0, 0
	binary.BigEndian.PutUint16(seg[6:], L4Checksum6(ip, seg, ProtoUDP))
}

// UDPFlow is a reusable description of UDP frames from Src to Dst: build it
// once, then write headers for every packet with Build or BuildInPlace.
type UDPFlow struct {
	SrcMAC, DstMAC MAC
	// VLAN: 0 = untagged; otherwise 1..4095 (with Prio).
	VLAN     uint16
	Prio     uint8
	Src, Dst netip.AddrPort // both IPv4 or both IPv6
	TTL      uint8          // 0 = 64
	// NoChecksum leaves the UDP checksum 0 (IPv4 only; IPv6 requires one).
	NoChecksum bool
}

// HeaderLen is the length of the headers Build writes.
func (f *UDPFlow) HeaderLen() int {
	n := EthHdrLen + UDPHdrLen
	if f.VLAN != 0 {
		n += VLANTagLen
	}
	if f.Src.Addr().Is4() {
		n += IPv4HdrLen
	} else {
		n += IPv6HdrLen
	}
	return n
}

// Build writes the headers and copies payload after them; it returns the
// frame length.
func (f *UDPFlow) Build(b []byte, payload []byte) (int, error) {
	h := f.HeaderLen()
	if len(b) < h+len(payload) {
		return 0, ErrShort
	}
	copy(b[h:], payload)
	return f.BuildInPlace(b, len(payload))
}

// BuildInPlace writes the headers in front of payloadLen bytes of payload
// already at b[HeaderLen():] and returns the frame length.
func (f *UDPFlow) BuildInPlace(b []byte, payloadLen int) (int, error) {
	src, dst := f.Src.Addr(), f.Dst.Addr()
	v4 := src.Is4()
	if v4 != dst.Is4() || (!v4 && !(src.Is6() && dst.Is6())) {
		return 0, ErrAddr
	}
	h := f.HeaderLen()
	if payloadLen < 0 || len(b) < h+payloadLen {
		return 0, ErrShort
	}
	var off int
	var err error
	et := EtherTypeIPv6
	if v4 {
		et = EtherTypeIPv4
	}
	if f.VLAN != 0 {
		off, err = PutEthVLAN(b, f.DstMAC, f.SrcMAC, f.VLAN, f.Prio, et)
	} else {
		off, err = PutEth(b, f.DstMAC, f.SrcMAC, et)
	}
	if err != nil {
		return 0, err
	}
	ip := b[off:]
	l4len := UDPHdrLen + payloadLen
	if v4 {
		hdr := IPv4{Src: src.As4(), Dst: dst.As4(), Proto: ProtoUDP, TTL: f.TTL, DontFrag: true, PayloadLen: l4len}
		if _, err := PutIPv4(ip, &hdr); err != nil {
			return 0, err
		}
		off += IPv4HdrLen
	} else {
		hdr := IPv6{Src: src.As16(), Dst: dst.As16(), NextHeader: ProtoUDP, HopLimit: f.TTL, PayloadLen: l4len}
		if _, err := PutIPv6(ip, &hdr); err != nil {
			return 0, err
		}
		off += IPv6HdrLen
	}
	seg := b[off : off+l4len]
	if _, err := PutUDP(seg, f.Src.Port(), f.Dst.Port(), payloadLen); err != nil {
		return 0, err
	}
	switch {
	case v4 && !f.NoChecksum:
		SetUDPChecksum4(ip, seg)
	case !v4:
		SetUDPChecksum6(ip, seg)
	}
	return off + l4len, nil
}
