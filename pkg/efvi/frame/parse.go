package frame

import (
	"encoding/binary"
	"net/netip"
)

// Packet is the result of Parse: offsets into the frame and the decoded
// header fields. It holds no reference to the frame.
type Packet struct {
	DstMAC, SrcMAC MAC
	// VLAN is the outer 802.1Q VLAN id when Tagged.
	VLAN      uint16
	Tagged    bool
	EtherType uint16 // inner EtherType (after any tags)

	L3Off int // start of the IP header
	// L4Off is the start of the transport header (after IPv4 options or
	// IPv6 extension headers it does not skip: see Proto).
	L4Off int
	// End is where the IP datagram ends (L3Off + IP total length); bytes
	// after it are Ethernet padding.
	End int

	IPVersion uint8
	Proto     uint8 // IPv4 protocol / IPv6 next header
	Src, Dst  netip.Addr
	Fragment  bool // IPv4 MF or non-zero offset: no transport header parsed
	// SrcPort, DstPort and PayloadOff are set for UDP and TCP.
	SrcPort, DstPort uint16
	PayloadOff       int
}

// Parse decodes Ethernet (+ up to two 802.1Q/802.1ad tags), IPv4 or IPv6
// and UDP/TCP headers of b into p. It returns ErrNotIP for other
// EtherTypes (p's Ethernet fields are still set), ErrShort when a header is
// cut off, ErrTruncated when the frame is shorter than the IP length field
// says, and ErrHeader for a malformed IP header.
func Parse(b []byte, p *Packet) error {
	*p = Packet{}
	if len(b) < EthHdrLen {
		return ErrShort
	}
	copy(p.DstMAC[:], b[0:6])
	copy(p.SrcMAC[:], b[6:12])
	off := 12
	et := binary.BigEndian.Uint16(b[off:])
	for tags := 0; (et == EtherTypeVLAN || et == EtherTypeQinQ) && tags < 2; tags++ {
		if len(b) < off+2+VLANTagLen {
			return ErrShort
		}
		if !p.Tagged {
			p.Tagged = true
			p.VLAN = binary.BigEndian.Uint16(b[off+2:]) & 0x0fff
		}
		off += VLANTagLen
		et = binary.BigEndian.Uint16(b[off:])
	}
	off += 2
	p.EtherType = et
	p.L3Off = off
	switch et {
	case EtherTypeIPv4:
		return parse4(b, off, p)
	case EtherTypeIPv6:
		return parse6(b, off, p)
	}
	return ErrNotIP
}

func parse4(b []byte, off int, p *Packet) error {
	if len(b) < off+IPv4HdrLen {
		return ErrShort
	}
	ip := b[off:]
	if ip[0]>>4 != 4 {
		return ErrHeader
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < IPv4HdrLen || total < ihl {
		return ErrHeader
	}
	if len(ip) < ihl {
		return ErrShort
	}
	p.IPVersion = 4
	p.Proto = ip[9]
	p.Src = netip.AddrFrom4([4]byte(ip[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
	p.L4Off = off + ihl
	p.End = off + total
	if len(b) < p.End {
		return ErrTruncated
	}
	if frag := binary.BigEndian.Uint16(ip[6:]); frag&0x3fff != 0 {
		p.Fragment = true
		return nil
	}
	return parseL4(b, p)
}

func parse6(b []byte, off int, p *Packet) error {
	if len(b) < off+IPv6HdrLen {
		return ErrShort
	}
	ip := b[off:]
	if ip[0]>>4 != 6 {
		return ErrHeader
	}
	p.IPVersion = 6
	p.Proto = ip[6]
	p.Src = netip.AddrFrom16([16]byte(ip[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(ip[24:40]))
	p.L4Off = off + IPv6HdrLen
	p.End = p.L4Off + int(binary.BigEndian.Uint16(ip[4:]))
	if len(b) < p.End {
		return ErrTruncated
	}
	return parseL4(b, p)
}

func parseL4(b []byte, p *Packet) error {
	switch p.Proto {
	case ProtoUDP:
		if p.End-p.L4Off < UDPHdrLen {
			return ErrShort
		}
		u := b[p.L4Off:]
		ulen := int(binary.BigEndian.Uint16(u[4:]))
		if ulen < UDPHdrLen || p.L4Off+ulen > p.End {
			return ErrHeader
		}
		p.SrcPort = binary.BigEndian.Uint16(u[0:])
		p.DstPort = binary.BigEndian.Uint16(u[2:])
		p.PayloadOff = p.L4Off + UDPHdrLen
	case ProtoTCP:
		if p.End-p.L4Off < TCPHdrLen {
			return ErrShort
		}
		t := b[p.L4Off:]
		doff := int(t[12]>>4) * 4
		if doff < TCPHdrLen || p.L4Off+doff > p.End {
			return ErrHeader
		}
		p.SrcPort = binary.BigEndian.Uint16(t[0:])
		p.DstPort = binary.BigEndian.Uint16(t[2:])
		p.PayloadOff = p.L4Off + doff
	}
	return nil
}

// Payload returns the UDP/TCP payload of the parsed frame b (nil if none).
func (p *Packet) Payload(b []byte) []byte {
	if p.PayloadOff == 0 || p.PayloadOff > p.End || p.End > len(b) {
		return nil
	}
	return b[p.PayloadOff:p.End]
}

// IPv4HeaderOK verifies the IPv4 header checksum of the parsed frame b
// (true for non-IPv4).
func (p *Packet) IPv4HeaderOK(b []byte) bool {
	if p.IPVersion != 4 {
		return true
	}
	ihl := int(b[p.L3Off]&0x0f) * 4
	if p.L3Off+ihl > len(b) {
		return false
	}
	return Fold(Sum(b[p.L3Off:p.L3Off+ihl], 0)) == 0
}

// L4ChecksumOK verifies the UDP or TCP checksum of the parsed frame b (true
// for other protocols, fragments, and UDP over IPv4 with checksum 0).
func (p *Packet) L4ChecksumOK(b []byte) bool {
	if p.PayloadOff == 0 || p.Fragment {
		return true
	}
	seg := b[p.L4Off:p.End]
	if p.Proto == ProtoUDP {
		seg = seg[:binary.BigEndian.Uint16(seg[4:])]
		if p.IPVersion == 4 && seg[6] == 0 && seg[7] == 0 {
			return true
		}
	}
	var s uint32
	if p.IPVersion == 4 {
		s = pseudo4(b[p.L3Off:], p.Proto, len(seg))
	} else {
		s = pseudo6(b[p.L3Off:], p.Proto, len(seg))
	}
	return Fold(Sum(seg, s)) == 0
}
