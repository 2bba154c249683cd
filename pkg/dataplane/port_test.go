package dataplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// lab is a port (root netns) wired to a fabric netns, with the data plane open.
type lab struct {
	t        *testing.T
	fabric   *testnet.NS
	port     testnet.Veth // root netns end: the "Solarflare port"
	fab      testnet.Veth // fabric end
	portIP   netip.Addr
	fabIP    netip.Addr
	portMAC  [6]byte
	fabMAC   [6]byte
	pinDir   string
	prefix   string
	dp       *Port
	fabRaw   int // AF_PACKET socket on fab (inside the fabric netns)
	udpPorts map[uint16]int
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newLab(t *testing.T) *lab {
	testnet.RequireRoot(t)
	l := &lab{t: t, fabric: testnet.NewNS(t), udpPorts: map[uint16]int{}}
	l.port, l.fab = testnet.VethPair(t, nil, l.fabric)
	var r [2]byte
	_, _ = rand.Read(r[:])
	sub := fmt.Sprintf("10.%d.%d", 200+int(r[0])%50, r[1])
	l.portIP, l.fabIP = netip.MustParseAddr(sub+".1"), netip.MustParseAddr(sub+".2")
	if err := l.port.AddAddr(sub + ".1/24"); err != nil {
		t.Fatal(err)
	}
	if err := l.fab.AddAddr(sub + ".2/24"); err != nil {
		t.Fatal(err)
	}
	copy(l.portMAC[:], l.port.MAC)
	copy(l.fabMAC[:], l.fab.MAC)
	// Trap 1: the fabric end must run XDP or redirected TX frames vanish.
	if err := l.fabric.Do(func() error {
		c, err := AttachPassXDP(l.fab.Index)
		if err != nil {
			return err
		}
		t.Cleanup(func() { c.Close() })
		fd, err := rawSocket(l.fab.Index)
		l.fabRaw = fd
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(l.fabRaw) })
	l.pinDir = filepath.Join(DefaultBPFFS, "efvi-test-"+randHex(4))
	l.prefix = testnet.Prefix + randHex(2)
	t.Cleanup(func() {
		if l.dp != nil {
			_ = l.dp.Destroy()
		}
		_ = os.RemoveAll(l.pinDir)
	})
	l.open()
	return l
}

func (l *lab) open() {
	l.t.Helper()
	dp, err := Open(context.Background(), PortConfig{Ifname: l.port.Name, PinDir: l.pinDir, VethPrefix: l.prefix})
	if err != nil {
		l.t.Fatalf("open: %v", err)
	}
	l.dp = dp
}

func (l *lab) createVI(id uint32) *VI {
	l.t.Helper()
	v, err := l.dp.CreateVI(context.Background(), VIConfig{ID: id, SrcMAC: l.portMAC, SrcIPs: []netip.Addr{l.portIP}})
	if err != nil {
		l.t.Fatalf("create VI %d: %v", id, err)
	}
	return v
}

func rawSocket(ifindex int) (int, error) {
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind AF_PACKET: %w", err)
	}
	return fd, nil
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// viSocket opens an AF_PACKET socket on the VI's peer veth: with no XSK
// attached, frames delivered to the VI fall through to it.
func (l *lab) viSocket(v *VI) int {
	l.t.Helper()
	fd, err := rawSocket(v.PeerIfindex())
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// udpSocket binds a kernel UDP socket on the port's address.
func (l *lab) udpSocket(port uint16) int {
	l.t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(port), Addr: l.portIP.As4()}); err != nil {
		l.t.Fatalf("bind UDP %v:%d: %v", l.portIP, port, err)
	}
	return fd
}

// send injects frames from the fabric end toward the port.
func (l *lab) send(frames ...[]byte) {
	l.t.Helper()
	for _, f := range frames {
		if _, err := unix.Write(l.fabRaw, f); err != nil {
			l.t.Fatalf("send from fabric: %v", err)
		}
	}
}

// toPort is a UDP frame from the fabric to the port's address.
func (l *lab) toPort(dport uint16, payload string) []byte {
	f := udp4(l.fabIP.String(), l.portIP.String(), 40000, dport)
	f.src, f.dst = l.fabMAC, l.portMAC
	f.data = []byte(payload)
	return f.bytes()
}

// waitLimit bounds how long a receive may block before the test fails; it
// is a hang guard, not a timing assertion.
const waitLimit = 10 * time.Second

// recvFrame returns the next frame on an AF_PACKET socket that contains
// marker.
func recvFrame(t *testing.T, fd int, marker string) []byte {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	buf := make([]byte, 4096)
	for time.Now().Before(deadline) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 200)
		if err != nil && err != unix.EINTR {
			t.Fatalf("poll: %v", err)
		}
		if n == 0 {
			continue
		}
		m, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			continue
		}
		if bytes.Contains(buf[:m], []byte(marker)) {
			return append([]byte(nil), buf[:m]...)
		}
	}
	t.Fatalf("no frame with %q within %v", marker, waitLimit)
	return nil
}

// recvUDP returns the next datagram's payload on a UDP socket.
func recvUDP(t *testing.T, fd int) string {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, int(waitLimit/time.Millisecond)); err != nil || n == 0 {
		t.Fatalf("no datagram within %v (err %v)", waitLimit, err)
	}
	buf := make([]byte, 2048)
	n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return string(buf[:n])
}

func (l *lab) install(vi uint32, s filter.Spec) Handle {
	l.t.Helper()
	h, err := l.dp.InstallFilter(vi, s)
	if err != nil {
		l.t.Fatalf("install %+v: %v", s, err)
	}
	return h
}

func (l *lab) counters(vi uint32) Counters {
	l.t.Helper()
	c, err := l.dp.VICounters(vi)
	if err != nil {
		l.t.Fatal(err)
	}
	return c
}

func TestSteal(t *testing.T) {
	l := newLab(t)
	v := l.createVI(1)
	viFd := l.viSocket(v)
	kern := l.udpSocket(5000)
	h := l.install(1, localSpec(filter.ProtoUDP, l.portIP.String(), 5000))

	const n = 50
	var want []byte
	for i := 0; i < n; i++ {
		f := l.toPort(5000, fmt.Sprintf("steal-%03d", i))
		if i == n-1 {
			want = f
		}
		l.send(f)
	}
	for i := 0; i < n; i++ {
		got := recvFrame(t, viFd, fmt.Sprintf("steal-%03d", i))
		if i == n-1 && !bytes.Equal(got, want) {
			t.Fatalf("VI got %x, want the frame sent %x", got, want)
		}
	}
	c := l.counters(1)
	if c.RxPackets != n || c.RxBytes != uint64(n*len(want)) {
		t.Fatalf("VI counters %+v, want %d packets, %d bytes", c, n, n*len(want))
	}
	if hits, err := l.dp.FilterHits(h); err != nil || hits != n {
		t.Fatalf("filter hits %d (%v), want %d", hits, err, n)
	}
	// Unfiltered traffic reaches the kernel; stolen frames never did (the
	// first datagram the kernel socket sees is the one sent after removal).
	l.send(l.toPort(5001, "other-port"))
	if err := l.dp.RemoveFilter(h); err != nil {
		t.Fatal(err)
	}
	l.send(l.toPort(5000, "after-remove"))
	if got := recvUDP(t, kern); got != "after-remove" {
		t.Fatalf("kernel socket first got %q: stolen traffic leaked to the kernel", got)
	}
	other := l.udpSocket(5002)
	l.send(l.toPort(5002, "unfiltered"))
	if got := recvUDP(t, other); got != "unfiltered" {
		t.Fatalf("kernel got %q", got)
	}
	if c := l.counters(1); c.RxPackets != n {
		t.Fatalf("VI received %d frames after removal, want %d", c.RxPackets, n)
	}
}

// txFrame is a UDP frame the VI sends to the fabric.
func (l *lab) txFrame(srcMAC [6]byte, src netip.Addr, payload string) []byte {
	f := udp4(src.String(), l.fabIP.String(), 41000, 7000)
	f.src, f.dst = srcMAC, l.fabMAC
	f.data = []byte(payload)
	return f.bytes()
}

func TestTransmit(t *testing.T) {
	l := newLab(t)
	v := l.createVI(2)
	viFd := l.viSocket(v) // sending on v<N>p = the XSK TX path
	var rx int
	if err := l.fabric.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		rx = fd
		return unix.Bind(fd, &unix.SockaddrInet4{Port: 7000, Addr: l.fabIP.As4()})
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(rx) })
	badMAC := l.portMAC
	badMAC[5] ^= 0xff
	spoofIP := netip.MustParseAddr("10.1.2.3")
	sends := []struct {
		frame []byte
		spoof bool
	}{
		{l.txFrame(badMAC, l.portIP, "spoof-mac"), true},
		{l.txFrame(l.portMAC, spoofIP, "spoof-ip"), true},
		{l.txFrame(l.portMAC, l.portIP, "tx-1"), false},
		{l.txFrame(l.portMAC, l.portIP, "tx-2"), false},
	}
	var txBytes uint64
	for _, s := range sends {
		if _, err := unix.Write(viFd, s.frame); err != nil {
			t.Fatalf("send on %s: %v", v.PeerName(), err)
		}
		if !s.spoof {
			txBytes += uint64(len(s.frame))
		}
	}
	for _, want := range []string{"tx-1", "tx-2"} {
		if got := recvUDP(t, rx); got != want {
			t.Fatalf("fabric received %q, want %q (spoofed frames must not pass)", got, want)
		}
	}
	c := l.counters(2)
	if c.TxPackets != 2 || c.TxBytes != txBytes || c.TxSpoofDrops != 2 {
		t.Fatalf("counters %+v, want 2 TX packets / %d bytes / 2 spoof drops", c, txBytes)
	}
	// SetSources: the pod's IP changed.
	newIP := netip.MustParseAddr("10.1.2.3")
	if err := v.SetSources(l.portMAC, []netip.Addr{newIP}); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(viFd, l.txFrame(l.portMAC, l.portIP, "old-ip")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(viFd, l.txFrame(l.portMAC, newIP, "new-ip")); err != nil {
		t.Fatal(err)
	}
	if got := recvUDP(t, rx); got != "new-ip" {
		t.Fatalf("after SetSources fabric received %q, want new-ip", got)
	}
	if c := l.counters(2); c.TxSpoofDrops != 3 {
		t.Fatalf("spoof drops %d, want 3", c.TxSpoofDrops)
	}
}

func TestRestartKeepsFlowing(t *testing.T) {
	l := newLab(t)
	v := l.createVI(3)
	viFd := l.viSocket(v)
	kern := l.udpSocket(5000)
	spec := localSpec(filter.ProtoUDP, l.portIP.String(), 5000)
	l.install(3, spec)
	l.send(l.toPort(5000, "before-close"))
	recvFrame(t, viFd, "before-close")

	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	l.dp = nil
	l.send(l.toPort(5000, "agent-down"))
	recvFrame(t, viFd, "agent-down")

	l.open()
	v2, ok := l.dp.VI(3)
	if !ok {
		t.Fatal("VI 3 not adopted after restart")
	}
	if v2.PeerIfindex() != v.PeerIfindex() || v2.PeerName() != v.PeerName() {
		t.Fatalf("adopted VI %s/%d, want %s/%d", v2.PeerName(), v2.PeerIfindex(), v.PeerName(), v.PeerIfindex())
	}
	if mac, srcs := v2.Sources(); mac != l.portMAC || len(srcs) != 1 || srcs[0] != l.portIP {
		t.Fatalf("adopted sources %x %v", mac, srcs)
	}
	l.send(l.toPort(5000, "after-reopen"))
	recvFrame(t, viFd, "after-reopen")
	if c := l.counters(3); c.RxPackets != 3 {
		t.Fatalf("rx packets %d, want 3", c.RxPackets)
	}
	// The new agent removes the filter it did not install.
	if err := l.dp.RemoveFilter(Handle{VI: 3, Spec: spec}); err != nil {
		t.Fatalf("remove adopted filter: %v", err)
	}
	l.send(l.toPort(5000, "to-kernel"))
	if got := recvUDP(t, kern); got != "to-kernel" {
		t.Fatalf("kernel got %q", got)
	}
	// Destroy leaves nothing behind.
	if err := l.dp.Destroy(); err != nil {
		t.Fatal(err)
	}
	l.dp = nil
	if _, err := os.Stat(l.pinDir); !os.IsNotExist(err) {
		t.Fatalf("pin dir still there: %v", err)
	}
	if _, err := (netlinkOps{}).linkByName(v.Name()); err == nil {
		t.Fatalf("veth %s survived Destroy", v.Name())
	}
}
