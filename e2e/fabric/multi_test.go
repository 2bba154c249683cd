package fabric

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
)

// TestMultiUpDown: two "nodes" (network namespaces) get a port each on one
// fabric bridge; the fabric reaches both ports and routes each pod CIDR to
// its node; the nodes reach each other through it; DownMulti removes it all,
// the nodes' ports included.
func TestMultiUpDown(t *testing.T) {
	testnet.RequireRoot(t)
	a, b := testnet.NewNS(t), testnet.NewNS(t)
	m := Multi{
		NS: testnet.UniqueName("fmns"), Bridge: "fbr", BridgeAddr: "10.211.9.2/24", Port: "efvi0",
		PinDir: filepath.Join("/sys/fs/bpf", testnet.UniqueName("fmpin")),
		Nodes: []Node{
			{Name: "a", NSPath: a.Path(), Addr: "10.211.9.11/24", PodCIDR: "10.213.1.0/24"},
			{Name: "b", NSPath: b.Path(), Addr: "10.211.9.12/24", PodCIDR: "10.213.2.0/24"},
		},
	}
	t.Cleanup(func() { _ = DownMulti(m) })
	if err := UpMulti(m); err != nil {
		t.Fatal(err)
	}
	if err := UpMulti(m); err != nil { // replaces the first
		t.Fatalf("second UpMulti: %v", err)
	}
	fab, err := netns.GetFromName(m.NS)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(fab)
	fab.Close()
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range m.Nodes {
		far, err := h.LinkByName(FarEnd(i))
		if err != nil {
			t.Fatalf("far end of %s: %v", n.Name, err)
		}
		if x := far.Attrs().Xdp; x == nil || !x.Attached {
			t.Fatalf("no XDP program on %s: %+v", far.Attrs().Name, x)
		}
		if _, err := os.Stat(filepath.Join(m.PinDir, FarEnd(i))); err != nil {
			t.Fatalf("XDP link of %s not pinned: %v", FarEnd(i), err)
		}
		gw, _, _ := net.ParseCIDR(n.Addr)
		_, cidr, _ := net.ParseCIDR(n.PodCIDR)
		routes, err := h.RouteGet(cidr.IP)
		if err != nil || len(routes) == 0 || !routes[0].Gw.Equal(gw) {
			t.Fatalf("route to %s's pods in the fabric: %+v %v", n.Name, routes, err)
		}
		// The fabric reaches the node's port (real frames over the bridge).
		if err := testnet.PingFrom(m.NS, netip.MustParseAddr(gw.String()), 5*time.Second); err != nil {
			t.Fatalf("ping %s's port from the fabric: %v", n.Name, err)
		}
	}
	// Node a reaches node b through the fabric.
	if err := testnet.PingFrom(a.Name, netip.MustParseAddr("10.211.9.12"), 5*time.Second); err != nil {
		t.Fatalf("node a -> node b over the fabric: %v", err)
	}
	h.Close() // holds the fabric namespace otherwise
	if err := DownMulti(m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", m.NS)); !os.IsNotExist(err) {
		t.Fatalf("fabric netns %s still there: %v", m.NS, err)
	}
	if _, err := os.Stat(m.PinDir); !os.IsNotExist(err) {
		t.Fatalf("pin dir %s still there: %v", m.PinDir, err)
	}
	for _, ns := range []*testnet.NS{a, b} {
		nh, err := ns.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		// The kernel tears a namespace down asynchronously.
		gone := false
		for i := 0; i < 100 && !gone; i++ {
			_, err := nh.LinkByName(m.Port)
			gone = err != nil
			if !gone {
				time.Sleep(50 * time.Millisecond)
			}
		}
		nh.Close()
		if !gone {
			t.Errorf("node %s still has its port %s 5 s after DownMulti", ns.Name, m.Port)
		}
	}
}
