package dataplane

import (
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

func TestReplicate(t *testing.T) {
	l := newLab(t)
	v1, v2, v3 := l.createVI(1), l.createVI(2), l.createVI(3)
	fd1, fd2, fd3 := l.viSocket(v1), l.viSocket(v2), l.viSocket(v3)
	group := localSpec(filter.ProtoUDP, "239.7.7.7", 6000)
	h1 := l.install(1, group)
	l.install(2, group)
	mc := func(payload string) []byte {
		f := udp4(l.fabIP.String(), "239.7.7.7", 40000, 6000)
		f.src, f.dst = l.fabMAC, [6]byte{0x01, 0x00, 0x5e, 0x07, 0x07, 0x07}
		f.data = []byte(payload)
		return f.bytes()
	}
	l.send(mc("mc-1"), mc("mc-2"))
	for _, fd := range []int{fd1, fd2} {
		recvFrame(t, fd, "mc-1")
		recvFrame(t, fd, "mc-2")
	}
	// VI 3 joins late, VI 1 leaves: only 2 and 3 get the next one.
	h3 := l.install(3, group)
	if err := l.dp.RemoveFilter(h1); err != nil {
		t.Fatal(err)
	}
	l.send(mc("mc-3"))
	recvFrame(t, fd2, "mc-3")
	recvFrame(t, fd3, "mc-3")
	if c := l.counters(1); c.RxPackets != 2 {
		t.Fatalf("VI 1 rx %d after leaving, want 2", c.RxPackets)
	}
	if c := l.counters(3); c.RxPackets != 1 {
		t.Fatalf("VI 3 rx %d, want 1", c.RxPackets)
	}
	if hits, err := l.dp.FilterHits(h3); err != nil || hits != 3 {
		t.Fatalf("group hits %d (%v), want 3", hits, err)
	}
	// Destroying the last members dissolves the group.
	if err := l.dp.DestroyVI(2); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.DestroyVI(3); err != nil {
		t.Fatal(err)
	}
	if n := len(l.dp.t.members); n != 0 {
		t.Fatalf("%d groups left, want 0", n)
	}
}

func TestSniff(t *testing.T) {
	l := newLab(t)
	v := l.createVI(1)
	l.createVI(2)
	viFd := l.viSocket(v)
	kern := l.udpSocket(5000)
	sniff := filter.Spec{Match: filter.MatchSniff}
	h := l.install(1, sniff)
	if _, err := l.dp.InstallFilter(2, sniff); err == nil {
		t.Fatal("second sniff owner accepted")
	}
	l.send(l.toPort(5000, "sniffed"))
	if got := recvUDP(t, kern); got != "sniffed" {
		t.Fatalf("kernel got %q", got)
	}
	got := recvFrame(t, viFd, "sniffed")
	if want := l.toPort(5000, "sniffed"); string(got) != string(want) {
		t.Fatalf("VI got %x, want %x", got, want)
	}
	// Non-promiscuous sniff skips frames for other hosts; promisc gets them.
	other := func(payload string) []byte {
		f := udp4(l.fabIP.String(), l.portIP.String(), 40000, 5000)
		f.src, f.dst = l.fabMAC, [6]byte{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
		f.data = []byte(payload)
		return f.bytes()
	}
	l.send(other("otherhost-1"), l.toPort(5000, "marker-1"))
	recvFrame(t, viFd, "marker-1") // otherhost-1 would have come first
	if got := recvUDP(t, kern); got != "marker-1" {
		t.Fatalf("kernel got %q", got)
	}
	if err := l.dp.RemoveFilter(h); err != nil {
		t.Fatal(err)
	}
	h = l.install(1, filter.Spec{Match: filter.MatchSniff, Promisc: true})
	l.send(other("otherhost-2"))
	recvFrame(t, viFd, "otherhost-2")
	if err := l.dp.RemoveFilter(h); err != nil {
		t.Fatal(err)
	}
	before := l.counters(1).RxPackets
	l.send(l.toPort(5000, "unsniffed"))
	if got := recvUDP(t, kern); got != "unsniffed" {
		t.Fatalf("kernel got %q", got)
	}
	// Drain kernel datagrams of the promisc phase is unnecessary: the
	// otherhost frames never reach a socket.
	if c := l.counters(1).RxPackets; c != before {
		t.Fatalf("VI received %d frames after sniff removal", c-before)
	}
}

func TestBlockKernel(t *testing.T) {
	l := newLab(t)
	l.createVI(1)
	kern := l.udpSocket(5000)
	h := l.install(1, filter.Spec{Match: filter.MatchBlockKernel, Block: filter.BlockUnicast})
	l.send(l.toPort(5000, "blocked"))
	if err := l.dp.RemoveFilter(h); err != nil {
		t.Fatal(err)
	}
	l.send(l.toPort(5000, "unblocked"))
	if got := recvUDP(t, kern); got != "unblocked" {
		t.Fatalf("kernel got %q first: block-kernel let it through", got)
	}
	// DestroyVI removes its block filter too.
	l.install(1, filter.Spec{Match: filter.MatchBlockKernel})
	l.send(l.toPort(5000, "blocked-2"))
	if err := l.dp.DestroyVI(1); err != nil {
		t.Fatal(err)
	}
	l.send(l.toPort(5000, "vi-gone"))
	if got := recvUDP(t, kern); got != "vi-gone" {
		t.Fatalf("kernel got %q first", got)
	}
}

func TestDestroyVIStopsDelivery(t *testing.T) {
	l := newLab(t)
	v := l.createVI(1)
	viFd := l.viSocket(v)
	kern := l.udpSocket(5000)
	l.install(1, localSpec(filter.ProtoUDP, l.portIP.String(), 5000))
	l.send(l.toPort(5000, "to-vi"))
	recvFrame(t, viFd, "to-vi")
	if err := l.dp.DestroyVI(1); err != nil {
		t.Fatal(err)
	}
	l.send(l.toPort(5000, "to-kernel"))
	if got := recvUDP(t, kern); got != "to-kernel" {
		t.Fatalf("kernel got %q", got)
	}
	if _, err := l.dp.VICounters(1); err == nil {
		t.Fatal("counters of a destroyed VI")
	}
	// The id can be reused, with fresh counters.
	l.createVI(1)
	if c := l.counters(1); c != (Counters{}) {
		t.Fatalf("reused VI counters %+v, want zero", c)
	}
}

func TestVLANAndIPv6(t *testing.T) {
	l := newLab(t)
	v1, v2 := l.createVI(1), l.createVI(2)
	fd1, fd2 := l.viSocket(v1), l.viSocket(v2)
	l.install(1, withVLAN(localSpec(filter.ProtoUDP, "10.9.9.9", 5000), 42))
	l.install(2, localSpec(filter.ProtoUDP, "fd00:99::1", 5000))
	tagged := udp4(l.fabIP.String(), "10.9.9.9", 40000, 5000)
	tagged.src, tagged.dst, tagged.vlan = l.fabMAC, l.portMAC, 42
	tagged.data = []byte("vlan-42")
	l.send(tagged.bytes())
	// The XDP frame keeps its tag (an XSK would see it); AF_PACKET on the
	// peer sees the frame after the kernel moved the tag to metadata.
	recvFrame(t, fd1, "vlan-42")
	ip6 := udp6("fd00:99::2", "fd00:99::1", 40000, 5000)
	ip6.src, ip6.dst = l.fabMAC, l.portMAC
	ip6.data = []byte("ipv6-steal")
	l.send(ip6.bytes())
	recvFrame(t, fd2, "ipv6-steal")
	for id, want := range map[uint32]uint64{1: 1, 2: 1} {
		if c := l.counters(id); c.RxPackets != want {
			t.Errorf("VI %d rx %d, want %d", id, c.RxPackets, want)
		}
	}
	// IPv6 TX source check on the real path.
	if err := v2.SetSources(l.portMAC, []netip.Addr{netip.MustParseAddr("fd00:99::1")}); err != nil {
		t.Fatal(err)
	}
	for i, src := range []string{"fd00:99::1", "fd00:99::66"} {
		f := udp6(src, "fd00:99::2", 1, 2)
		f.src, f.dst = l.portMAC, l.fabMAC
		f.data = []byte(fmt.Sprintf("tx6-%d", i))
		if _, err := unix.Write(fd2, f.bytes()); err != nil {
			t.Fatal(err)
		}
	}
	recvFrame(t, l.fabRaw, "tx6-0")
	if c := l.counters(2); c.TxPackets != 1 || c.TxSpoofDrops != 1 {
		t.Fatalf("IPv6 TX counters %+v, want 1 sent, 1 spoof drop", c)
	}
}

func TestAttachXSKRejectsNonXSK(t *testing.T) {
	l := newLab(t)
	v := l.createVI(1)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := v.AttachXSK(fd); err == nil {
		t.Fatal("a UDP socket was accepted as an XSK")
	}
	if err := v.AttachXSK(-1); err == nil {
		t.Fatal("fd -1 accepted")
	}
	// The fd was not probed or closed (trap: ebpf.NewMapFromFD closes non-maps).
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("fd closed by AttachXSK: %v", err)
	}
}
