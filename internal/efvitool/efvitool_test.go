package efvitool

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

var (
	podMAC  = frame.MAC{0x02, 0, 0, 0, 0, 1}
	peerMAC = frame.MAC{0x02, 0, 0, 0, 0, 2}
	podIP   = netip.MustParseAddr("10.9.0.1")
	peerIP  = netip.MustParseAddr("10.9.0.2")
)

func udpFrame(t testing.TB, dstMAC frame.MAC, src, dst netip.AddrPort, vlan uint16) []byte {
	t.Helper()
	f := frame.UDPFlow{SrcMAC: peerMAC, DstMAC: dstMAC, Src: src, Dst: dst, VLAN: vlan}
	b := make([]byte, 256)
	n, err := f.Build(b, []byte("payload!"))
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

func specs(t testing.TB, texts ...string) []filter.Spec {
	t.Helper()
	var out []filter.Spec
	for _, s := range texts {
		sp, err := filter.ParseWithDefaultHost(s, podIP)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		out = append(out, sp)
	}
	return out
}

func TestClassifier(t *testing.T) {
	// Given in an order different from the match order on purpose.
	c := NewClassifier(specs(t, "unicast-mis", "multicast-all", "udp:5000", "udp:10.9.0.1:5000,10.9.0.2:6000",
		"udp:vid=7,5001", "eth:02:00:00:00:00:01,ipproto=17", "ethertype:0x88f7"))
	from := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(peerIP, port) }
	to := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(podIP, port) }
	ptp := append(make([]byte, 0, 64), peerMAC[:]...)
	ptp = append(append(append(podMAC[:0:0], podMAC[:]...), ptp...), 0x88, 0xf7)
	ptp = append(ptp, make([]byte, 46)...)
	for _, tc := range []struct {
		name string
		b    []byte
		want int
	}{
		{"full beats local", udpFrame(t, podMAC, from(6000), to(5000), 0), 3},
		{"local", udpFrame(t, podMAC, from(6001), to(5000), 0), 2},
		{"vlan local", udpFrame(t, podMAC, from(1), to(5001), 7), 4},
		{"vlan local, wrong vlan: MAC+ipproto", udpFrame(t, podMAC, from(1), to(5001), 8), 5},
		{"MAC+ipproto", udpFrame(t, podMAC, from(1), to(9999), 0), 5},
		{"unicast mismatch", udpFrame(t, peerMAC, from(1), to(9999), 0), 0},
		{"multicast all", udpFrame(t, frame.MAC{0x01, 0, 0x5e, 1, 2, 3}, from(1), netip.AddrPortFrom(netip.MustParseAddr("239.1.2.3"), 5000), 0), 1},
		{"ethertype", ptp, 6},
	} {
		var p frame.Packet
		ok := frame.Parse(tc.b, &p) == nil
		if got := c.Match(&p, ok); got != tc.want {
			t.Errorf("%s: matched %d, want %d", tc.name, got, tc.want)
		}
	}
	// No catch-all: an unmatched frame is Other.
	c = NewClassifier(specs(t, "udp:5000"))
	var p frame.Packet
	b := udpFrame(t, podMAC, netip.AddrPortFrom(peerIP, 1), netip.AddrPortFrom(podIP, 5001), 0)
	if got := c.Match(&p, frame.Parse(b, &p) == nil); got != Other {
		t.Errorf("unmatched frame: %d, want Other", got)
	}
	if a := testing.AllocsPerRun(100, func() { _ = frame.Parse(b, &p); c.Match(&p, true) }); a != 0 {
		t.Errorf("Match allocates %v per frame", a)
	}
}

func TestSwapUDP(t *testing.T) {
	for _, pair := range [][2]string{{"10.9.0.2", "10.9.0.1"}, {"fd00::2", "fd00::1"}} {
		src := netip.AddrPortFrom(netip.MustParseAddr(pair[0]), 1111)
		dst := netip.AddrPortFrom(netip.MustParseAddr(pair[1]), 2222)
		b := udpFrame(t, podMAC, src, dst, 0)
		var p frame.Packet
		if err := frame.Parse(b, &p); err != nil {
			t.Fatal(err)
		}
		SwapUDP(b, &p)
		var q frame.Packet
		if err := frame.Parse(b, &q); err != nil {
			t.Fatal(err)
		}
		if q.SrcMAC != podMAC || q.DstMAC != peerMAC || q.Src != dst.Addr() || q.Dst != src.Addr() || q.SrcPort != 2222 || q.DstPort != 1111 {
			t.Errorf("%v: swapped %+v", pair, q)
		}
		if !q.IPv4HeaderOK(b) || !q.L4ChecksumOK(b) {
			t.Errorf("%v: checksums wrong after the swap", pair)
		}
	}
}

func TestMulticastMAC(t *testing.T) {
	for _, c := range []struct {
		ip   string
		want frame.MAC
		ok   bool
	}{
		{"239.129.2.3", frame.MAC{0x01, 0x00, 0x5e, 0x01, 0x02, 0x03}, true},
		{"224.0.0.251", frame.MAC{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}, true},
		{"ff02::1:ff00:1234", frame.MAC{0x33, 0x33, 0xff, 0x00, 0x12, 0x34}, true},
		{"10.0.0.1", frame.MAC{}, false},
	} {
		m, ok := MulticastMAC(netip.MustParseAddr(c.ip))
		if m != c.want || ok != c.ok {
			t.Errorf("%s: %x %v, want %x %v", c.ip, m, ok, c.want, c.ok)
		}
	}
}

func TestParseMAC(t *testing.T) {
	if m, err := ParseMAC("-x", "02:00:00:00:00:0a"); err != nil || m[5] != 10 {
		t.Errorf("%x %v", m, err)
	}
	for _, bad := range []string{"", "zz", "00:00:00:00:00:00:00:00"} {
		if _, err := ParseMAC("-dst-mac", bad); err == nil || !strings.Contains(err.Error(), "-dst-mac") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestAppendHexdump(t *testing.T) {
	b := make([]byte, 20)
	for i := range b {
		b[i] = byte(i * 17)
	}
	got := string(AppendHexdump(nil, b))
	want := "  0000 00 11 22 33 44 55 66 77  88 99 aa bb cc dd ee ff\n  0010 10 21 32 43\n"
	if got != want {
		t.Errorf("hexdump\n%q\nwant\n%q", got, want)
	}
	buf := make([]byte, 0, 1024)
	if a := testing.AllocsPerRun(100, func() { buf = AppendHexdump(buf[:0], b) }); a != 0 {
		t.Errorf("AppendHexdump allocates %v", a)
	}
}

func TestOpenWithoutSocket(t *testing.T) {
	t.Setenv("EFVI_SOCKET", "")
	if _, err := Open(context.Background(), "", 64); err == nil || !strings.Contains(err.Error(), "-socket") {
		t.Errorf("no socket: %v", err)
	}
	if _, err := Open(context.Background(), "/nonexistent/broker.sock", 64); err == nil || !strings.Contains(err.Error(), "agent") {
		t.Errorf("missing socket: %v", err)
	}
}

// FuzzClassify: any bytes, parsed or not, classify without panicking, to an
// index in range or Other.
func FuzzClassify(f *testing.F) {
	f.Add(udpFrame(f, podMAC, netip.AddrPortFrom(peerIP, 6000), netip.AddrPortFrom(podIP, 5000), 0))
	f.Add(udpFrame(f, podMAC, netip.AddrPortFrom(peerIP, 6000), netip.AddrPortFrom(podIP, 5001), 7))
	f.Add([]byte{1, 2, 3})
	c := NewClassifier(specs(f, "udp:5000", "udp:vid=7,5001", "eth:02:00:00:00:00:01", "ipproto:6", "multicast-mis", "unicast-all"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p frame.Packet
		ok := frame.Parse(b, &p) == nil
		if i := c.Match(&p, ok); i != Other && (i < 0 || i >= c.Len()) {
			t.Fatalf("index %d", i)
		}
		_ = AppendHexdump(nil, b)
	})
}
