package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

var (
	macA = MAC{0x02, 0, 0, 0, 0, 1}
	macB = MAC{0x02, 0, 0, 0, 0, 2}
)

func flow4() UDPFlow {
	return UDPFlow{SrcMAC: macA, DstMAC: macB,
		Src: netip.MustParseAddrPort("10.213.171.1:45468"), Dst: netip.MustParseAddrPort("10.213.171.2:9000")}
}

func TestKnownChecksum(t *testing.T) {
	// Captured from the kernel (values computed independently).
	f := flow4()
	b := make([]byte, 128)
	n, err := f.Build(b, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if n != 47 {
		t.Fatalf("len %d, want 47", n)
	}
	if got := binary.BigEndian.Uint16(b[40:]); got != 0x7b8f {
		t.Errorf("udp checksum %#x, want 0x7b8f", got)
	}
	// RFC 1071 example: 0001 f203 f4f5 f6f7 -> sum ddf2, checksum 220d.
	if c := Checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); c != 0x220d {
		t.Errorf("rfc1071 checksum %#x, want 0x220d", c)
	}
}

func TestBuildParseRoundTrip(t *testing.T) {
	for _, f := range []UDPFlow{
		flow4(),
		{SrcMAC: macA, DstMAC: macB, VLAN: 42, Prio: 5, Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("239.1.2.3:5000")},
		{SrcMAC: macA, DstMAC: macB, Src: netip.MustParseAddrPort("[fd00::1]:7"), Dst: netip.MustParseAddrPort("[fd00::2]:8")},
		{SrcMAC: macA, DstMAC: macB, VLAN: 4095, Src: netip.MustParseAddrPort("[fd00::1]:7"), Dst: netip.MustParseAddrPort("[ff02::1]:8")},
	} {
		b := make([]byte, 2048)
		payload := bytes.Repeat([]byte{0xa5, 0x5a, 0x01}, 101)
		n, err := f.Build(b, payload)
		if err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		var p Packet
		if err := Parse(b[:n], &p); err != nil {
			t.Fatalf("parse: %v", err)
		}
		if p.Src != f.Src.Addr() || p.Dst != f.Dst.Addr() || p.SrcPort != f.Src.Port() || p.DstPort != f.Dst.Port() || p.Proto != ProtoUDP {
			t.Errorf("parsed %+v from %+v", p, f)
		}
		if p.Tagged != (f.VLAN != 0) || p.VLAN != f.VLAN || p.DstMAC != f.DstMAC || p.SrcMAC != f.SrcMAC {
			t.Errorf("ethernet fields %+v from %+v", p, f)
		}
		if !bytes.Equal(p.Payload(b[:n]), payload) {
			t.Errorf("payload mismatch")
		}
		if !p.IPv4HeaderOK(b[:n]) || !p.L4ChecksumOK(b[:n]) {
			t.Errorf("checksums of a built frame do not verify: %+v", f)
		}
		// Corrupt one payload byte: L4 checksum must fail; IP header still OK.
		b[n-1] ^= 0xff
		if p.L4ChecksumOK(b[:n]) {
			t.Errorf("corrupted payload passes the L4 checksum")
		}
		b[n-1] ^= 0xff
		if f.Src.Addr().Is4() {
			b[p.L3Off+8]-- // TTL
			if p.IPv4HeaderOK(b[:n]) {
				t.Errorf("corrupted IPv4 header passes")
			}
		}
		// Ethernet padding after the datagram is ignored.
		if err := Parse(b[:n+10], &p); err != nil || p.End != n {
			t.Errorf("padded frame: %v end %d want %d", err, p.End, n)
		}
		if err := Parse(b[:n-1], &p); !errors.Is(err, ErrTruncated) {
			t.Errorf("short frame: %v, want ErrTruncated", err)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	f := flow4()
	if _, err := f.Build(make([]byte, 10), nil); !errors.Is(err, ErrShort) {
		t.Errorf("short buffer: %v", err)
	}
	f.Dst = netip.MustParseAddrPort("[fd00::1]:1")
	if _, err := f.Build(make([]byte, 100), nil); !errors.Is(err, ErrAddr) {
		t.Errorf("mixed families: %v", err)
	}
	if _, err := PutUDP(make([]byte, 8), 1, 2, 70000); !errors.Is(err, ErrTooBig) {
		t.Errorf("big payload: %v", err)
	}
	var p Packet
	if err := Parse([]byte{1, 2, 3}, &p); !errors.Is(err, ErrShort) {
		t.Errorf("3 bytes: %v", err)
	}
	arp := make([]byte, 60)
	binary.BigEndian.PutUint16(arp[12:], EtherTypeARP)
	if err := Parse(arp, &p); !errors.Is(err, ErrNotIP) {
		t.Errorf("arp: %v", err)
	}
}

func TestZeroAlloc(t *testing.T) {
	f := flow4()
	b := make([]byte, 2048)
	payload := make([]byte, 64)
	var p Packet
	allocs := testing.AllocsPerRun(100, func() {
		n, _ := f.Build(b, payload)
		_ = Parse(b[:n], &p)
		_ = p.L4ChecksumOK(b[:n])
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per build+parse, want 0", allocs)
	}
}

func FuzzParse(f *testing.F) {
	for _, fl := range []UDPFlow{flow4(), {VLAN: 7, Src: netip.MustParseAddrPort("[fd00::1]:7"), Dst: netip.MustParseAddrPort("[fd00::2]:8")}} {
		b := make([]byte, 200)
		n, _ := fl.Build(b, []byte("seed payload"))
		f.Add(b[:n])
	}
	f.Add([]byte{})
	f.Add(make([]byte, 14))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		err := Parse(b, &p)
		_ = p.IPv4HeaderOK(b)
		_ = p.Payload(b)
		if err == nil {
			_ = p.L4ChecksumOK(b)
			if p.End > len(b) || p.L4Off > p.End || p.PayloadOff > p.End {
				t.Fatalf("offsets out of range: %+v len %d", p, len(b))
			}
		}
	})
}

func BenchmarkChecksum1500(b *testing.B) {
	buf := make([]byte, 1500)
	b.SetBytes(1500)
	for b.Loop() {
		_ = Checksum(buf)
	}
}

func TestSumMatchesReference(t *testing.T) {
	ref := func(b []byte) uint16 {
		var s uint32
		for i := 0; i+1 < len(b); i += 2 {
			s += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			s += uint32(b[len(b)-1]) << 8
		}
		for s > 0xffff {
			s = s&0xffff + s>>16
		}
		return ^uint16(s)
	}
	b := make([]byte, 1600)
	for i := range b {
		b[i] = byte(i*7 + i>>3)
	}
	for n := 0; n < len(b); n += 1 + n/10 {
		if got, want := Checksum(b[:n]), ref(b[:n]); got != want {
			t.Fatalf("len %d: %#x want %#x", n, got, want)
		}
	}
	for i := range b {
		b[i] = 0xff
	}
	if got, want := Checksum(b), ref(b); got != want {
		t.Fatalf("all ones: %#x want %#x", got, want)
	}
}
