package dataplane

import (
	"encoding/binary"
	"net/netip"
)

// frame describes a test packet.
type frame struct {
	dst, src  [6]byte
	vlan      int // -1: untagged
	etherType uint16
	srcIP     netip.Addr
	dstIP     netip.Addr
	proto     uint8
	sport     uint16
	dport     uint16
	ipOptions int  // IPv4 option bytes (multiple of 4)
	ihl       int  // override IHL when > 0
	mf        bool // IPv4 more-fragments
	fragOff   uint16
	extHdr    bool // IPv6: insert a hop-by-hop header
	truncL4   bool // cut the frame inside the L4 header
	payload   int
	data      []byte // payload bytes (overrides payload)
}

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

var (
	macPort  = [6]byte{0x02, 0, 0, 0, 0, 1}
	macPeer  = [6]byte{0x02, 0, 0, 0, 0, 2}
	macMcast = [6]byte{0x01, 0x00, 0x5e, 0x01, 0x02, 0x03}
)

func udp4(src, dst string, sport, dport uint16) frame {
	return frame{dst: macPort, src: macPeer, vlan: -1, etherType: 0x0800, srcIP: netip.MustParseAddr(src),
		dstIP: netip.MustParseAddr(dst), proto: protoUDP, sport: sport, dport: dport, payload: 8}
}

func udp6(src, dst string, sport, dport uint16) frame {
	f := udp4("0.0.0.0", "0.0.0.0", sport, dport)
	f.etherType = 0x86dd
	f.srcIP, f.dstIP = netip.MustParseAddr(src), netip.MustParseAddr(dst)
	return f
}

func (f frame) bytes() []byte {
	b := append([]byte(nil), f.dst[:]...)
	b = append(b, f.src[:]...)
	if f.vlan >= 0 {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, uint16(f.vlan))
	}
	b = binary.BigEndian.AppendUint16(b, f.etherType)
	l4 := binary.BigEndian.AppendUint16(nil, f.sport)
	l4 = binary.BigEndian.AppendUint16(l4, f.dport)
	if f.proto == protoTCP {
		l4 = append(l4, make([]byte, 16)...)
	} else {
		l4 = append(l4, 0, 0, 0, 0) // length, checksum
	}
	if f.data != nil {
		l4 = append(l4, f.data...)
	} else {
		l4 = append(l4, make([]byte, f.payload)...)
	}
	if f.proto == protoUDP {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		s, d := f.srcIP.AsSlice(), f.dstIP.AsSlice()
		sum := csumAdd(0, s)
		sum = csumAdd(sum, d)
		sum += uint32(protoUDP) + uint32(len(l4))
		sum = csumAdd(sum, l4)
		c := csumFold(sum)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[6:], c)
	}
	if f.truncL4 {
		l4 = l4[:3]
	}
	switch f.etherType {
	case 0x0800:
		ihl := 5 + f.ipOptions/4
		if f.ihl > 0 {
			ihl = f.ihl
		}
		h := make([]byte, 20+f.ipOptions)
		h[0] = 0x40 | byte(ihl)
		binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(l4)))
		fo := f.fragOff
		if f.mf {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8] = 64
		h[9] = f.proto
		s4, d4 := f.srcIP.As4(), f.dstIP.As4()
		copy(h[12:], s4[:])
		copy(h[16:], d4[:])
		binary.BigEndian.PutUint16(h[10:], csumFold(csumAdd(0, h)))
		b = append(b, h...)
		b = append(b, l4...)
	case 0x86dd:
		h := make([]byte, 40)
		h[0] = 0x60
		next := f.proto
		var ext []byte
		if f.extHdr {
			ext = make([]byte, 8)
			ext[0] = f.proto
			next = 0
		}
		binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
		h[6] = next
		h[7] = 64
		s, d := f.srcIP.As16(), f.dstIP.As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
		b = append(b, h...)
		b = append(b, ext...)
		b = append(b, l4...)
	default:
		b = append(b, make([]byte, 46)...)
	}
	return b
}
