package discovery

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/discovery/sysfstest"
)

func TestScanFakeSysfs(t *testing.T) {
	tr := sysfstest.New(t)
	tr.Add(sysfstest.Port{Name: "sfc0", Index: 4, MAC: "00:0F:53:00:00:01", Driver: "sfc", PCIAddress: "0000:3b:00.0", NUMANode: 1, Up: true})
	tr.Add(sysfstest.Port{Name: "x3", Index: 5, MAC: "00:0f:53:00:00:02", Driver: "xilinx_efct", PCIAddress: "0000:af:00.1", NUMANode: -1, Up: false})
	tr.Add(sysfstest.Port{Name: "veth9", Index: 9, MAC: "aa:bb:cc:dd:ee:ff", Up: true})
	tr.Add(sysfstest.Port{Name: "lo", Index: 1, MAC: "00:00:00:00:00:00", Up: true})
	ports, err := Scanner{Root: tr.Root}.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 3 {
		t.Fatalf("got %d ports (%+v), want 3 (lo excluded)", len(ports), ports)
	}
	want := []Port{
		{Name: "sfc0", Index: 4, Driver: "sfc", PCIAddress: "0000:3b:00.0", NUMANode: 1, MAC: "00:0f:53:00:00:01", OperState: "up", Carrier: true},
		{Name: "veth9", Index: 9, NUMANode: NUMAUnknown, MAC: "aa:bb:cc:dd:ee:ff", OperState: "up", Carrier: true},
		{Name: "x3", Index: 5, Driver: "xilinx_efct", PCIAddress: "0000:af:00.1", NUMANode: NUMAUnknown, MAC: "00:0f:53:00:00:02", OperState: "down"},
	}
	for i := range want {
		if ports[i] != want[i] {
			t.Errorf("port %d = %+v\n want %+v", i, ports[i], want[i])
		}
	}
	if !ports[0].Solarflare() || ports[1].Solarflare() || !ports[2].Solarflare() {
		t.Error("Solarflare() wrong")
	}
	if !ports[0].LinkUp() || ports[2].LinkUp() {
		t.Error("LinkUp() wrong")
	}
}

func TestScanErrors(t *testing.T) {
	_, err := Scanner{Root: filepath.Join(t.TempDir(), "nosys")}.Scan()
	if err == nil || !strings.Contains(err.Error(), "is sysfs mounted") {
		t.Fatalf("err = %v", err)
	}
	tr := sysfstest.New(t)
	tr.Add(sysfstest.Port{Name: "bad", Index: 3})
	if err := os.WriteFile(filepath.Join(tr.Root, "class/net/bad/ifindex"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := (Scanner{Root: tr.Root}).Scan(); err == nil || !strings.Contains(err.Error(), "port bad: ifindex") {
		t.Fatalf("err = %v", err)
	}
}

func TestLinkUpUnknownOperstate(t *testing.T) {
	if !(Port{OperState: "unknown", Carrier: true}).LinkUp() || (Port{OperState: "unknown"}).LinkUp() {
		t.Fatal("unknown operstate should follow carrier")
	}
}

// TestWatchInjectedEvents: a link change in the fake tree is reported after
// an injected event, and only changes are reported.
func TestWatchInjectedEvents(t *testing.T) {
	tr := sysfstest.New(t)
	tr.Add(sysfstest.Port{Name: "sfc0", Index: 4, MAC: "00:0f:53:00:00:01", Driver: "sfc", PCIAddress: "0000:3b:00.0", Up: true})
	ev := sysfstest.NewEvents()
	got := make(chan []Port, 8)
	w := &Watch{Scanner: Scanner{Root: tr.Root}, Events: ev, Resync: time.Hour, Debounce: time.Millisecond,
		OnChange: func(p []Port) { got <- p }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	next := func() []Port {
		t.Helper()
		select {
		case p := <-got:
			return p
		case <-time.After(10 * time.Second):
			t.Fatal("no change reported (10 s hang guard)")
			return nil
		}
	}
	if p := next(); len(p) != 1 || !p[0].LinkUp() {
		t.Fatalf("initial = %+v", p)
	}
	ev.Fire() // nothing changed: no report
	tr.SetLink("sfc0", false)
	ev.Fire()
	if p := next(); p[0].LinkUp() {
		t.Fatalf("after link down = %+v", p)
	}
	tr.Remove("sfc0")
	ev.Fire()
	if p := next(); len(p) != 0 {
		t.Fatalf("after removal = %+v", p)
	}
}

// TestWatchRealKernel runs the real scanner on /sys and real netlink events:
// bringing the peer of a host veth down must be reported as link down on our
// end, and up again as up.
func TestWatchRealKernel(t *testing.T) {
	testnet.RequireRoot(t)
	ns := testnet.NewNS(t)
	host, peer := testnet.VethPair(t, nil, ns)
	got := make(chan []Port, 32)
	w := &Watch{Scanner: Scanner{Root: "/sys"}, Events: Netlink{}, Resync: time.Hour,
		OnChange: func(p []Port) { got <- p }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, up bool) Port {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case ports := <-got:
				for _, p := range ports {
					if p.Name == host.Name && p.LinkUp() == up {
						return p
					}
				}
			case <-deadline:
				t.Fatalf("%s: %s never reported with LinkUp()=%v (10 s hang guard)", what, host.Name, up)
			}
		}
	}
	p := waitFor("initial", true)
	if p.Driver != "" || p.PCIAddress != "" || p.NUMANode != NUMAUnknown || p.Index == 0 {
		t.Errorf("veth port = %+v (virtual: no driver/PCI/NUMA)", p)
	}
	nl, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName(peer.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	waitFor("peer down", false)
	if err := nl.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	waitFor("peer up", true)
}
