package fabric

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
)

func TestUpDown(t *testing.T) {
	testnet.RequireRoot(t)
	c := Config{
		NS: testnet.UniqueName("fns"), Port: testnet.UniqueName("fp"), Peer: "fabric0",
		PortAddr: "10.211.7.1/24", PeerAddr: "10.211.7.2/24",
		PinPath: filepath.Join("/sys/fs/bpf", testnet.UniqueName("fpin")),
		Routes:  []string{"10.212.0.0/16"},
	}
	t.Cleanup(func() { _ = Down(c) })
	if err := Up(c); err != nil {
		t.Fatal(err)
	}
	// Up twice replaces the first fabric.
	if err := Up(c); err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if _, err := Status(c); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.PinPath); err != nil {
		t.Fatalf("XDP link not pinned: %v", err)
	}
	// The far end has an XDP program attached.
	ns, err := netns.GetFromName(c.NS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	peer, err := h.LinkByName(c.Peer)
	if err != nil {
		t.Fatal(err)
	}
	if x := peer.Attrs().Xdp; x == nil || !x.Attached {
		t.Fatalf("no XDP program on %s: %+v", c.Peer, x)
	}
	routes, err := h.RouteGet(net.IPv4(10, 212, 3, 4))
	if err != nil || len(routes) == 0 || !routes[0].Gw.Equal(net.IPv4(10, 211, 7, 1)) {
		t.Fatalf("pod route in the fabric: %+v %v", routes, err)
	}
	// UDP from the root namespace reaches a socket in the fabric namespace.
	var conn *net.UDPConn
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		root, _ := netns.Get()
		defer root.Close()
		if err := netns.Set(ns); err != nil {
			t.Fatal(err)
		}
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 211, 7, 2), Port: 9999})
		if serr := netns.Set(root); serr != nil {
			t.Fatal(serr)
		}
		if err != nil {
			t.Fatal(err)
		}
	}()
	defer conn.Close()
	s, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 211, 7, 2), Port: 9999})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	buf := make([]byte, 64)
	got := false
	for i := 0; i < 20 && !got; i++ { // the first datagram may wait on ARP
		if _, err := s.Write([]byte("fabric")); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		n, _, err := conn.ReadFromUDP(buf)
		got = err == nil && string(buf[:n]) == "fabric"
	}
	if !got {
		t.Fatal("no datagram crossed the fabric")
	}
	if err := Down(c); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(c.Port); err == nil {
		t.Fatal("port still exists after Down")
	}
	if _, err := os.Stat(filepath.Join("/run/netns", c.NS)); err == nil {
		t.Fatal("netns still exists after Down")
	}
	if _, err := os.Stat(c.PinPath); err == nil {
		t.Fatal("pin still exists after Down")
	}
	if err := Down(c); err != nil {
		t.Fatalf("Down twice: %v", err)
	}
}
