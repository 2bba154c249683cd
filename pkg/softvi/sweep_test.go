package softvi

import (
	"log/slog"
	"net"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
)

func TestVIVethPrefix(t *testing.T) {
	for name, want := range map[string]string{"efv12v0": "efv12", "efv12v0p": "efv12", "efv3v15p": "efv3"} {
		if got, ok := viVethPrefix(name); !ok || got != want {
			t.Errorf("%s: %q %v, want %q", name, got, ok, want)
		}
	}
	for _, name := range []string{"efv", "efvv0", "efv12", "efv12v", "efv12vp", "efvta344501ea", "efv1xv0", "efv12v0q", "eth0", "efv12v0pp"} {
		if got, ok := viVethPrefix(name); ok {
			t.Errorf("%s: taken for a VI veth of %q", name, got)
		}
	}
}

// The VI veths of a port that is gone are removed; those of a live port
// and links that only look alike stay.
func TestSweepOrphanVIs(t *testing.T) {
	testnet.RequireRoot(t)
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	gone := 1
	for {
		if _, err := net.InterfaceByIndex(gone); err != nil {
			break
		}
		gone += 100000
	}
	orphan := "efv" + strconv.Itoa(gone) + "v0"
	live := viVethPrefixOf(lo.Index) + "v9"
	alike := "efv" + strconv.Itoa(gone) + "x"
	for _, n := range []string{orphan, live, alike} {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n}, PeerName: n + "p"}
		if err := netlink.LinkAdd(v); err != nil {
			t.Fatalf("veth %s: %v", n, err)
		}
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(n); err == nil {
				_ = netlink.LinkDel(l)
			}
		})
	}
	b := New(Config{Logger: slog.New(slog.DiscardHandler)})
	b.sweepOrphanVIs()
	for n, want := range map[string]bool{orphan: false, orphan + "p": false, live: true, live + "p": true, alike: true} {
		_, err := netlink.LinkByName(n)
		if got := err == nil; got != want {
			t.Errorf("%s exists=%v, want %v", n, got, want)
		}
	}
}
