package main

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/softvi"
)

// TestPongOverVI runs the pong side on a VI served by the agent's software
// backend, and pings it with a kernel UDP socket from the fabric namespace,
// as `make demo` does in a cluster.
func TestPongOverVI(t *testing.T) {
	topo := bench.NewTopology(t, 235)
	if err := topo.Fabric.Do(func() error {
		c, err := dataplane.AttachPassXDP(topo.Wire.Index)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "efl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bpf := filepath.Join(dataplane.DefaultBPFFS, "efvt-efl-"+filepath.Base(dir))
	b := softvi.New(softvi.Config{BPFRoot: bpf, Authorizer: broker.AllowAny()})
	b.UseDirs(filepath.Join(dir, "run"), filepath.Join(dir, "state"))
	t.Cleanup(func() {
		b.Release(context.Background(), "p", "a1")
		b.Close()
		if p, err := dataplane.Open(context.Background(), dataplane.PortConfig{Ifname: topo.Port.Name, PinDir: filepath.Join(bpf, topo.Port.Name), VethPrefix: "x"}); err == nil {
			p.Destroy()
		}
	})
	b.OnPoolPorts(config.Pool{Name: "p", Backend: config.Software}, []discovery.Port{{Name: topo.Port.Name}})
	m, err := b.Prepare(context.Background(), deviceplugin.PrepareRequest{Pool: "p", AllocationID: "a1", Devices: []string{topo.Port.Name + "-vi0"}})
	if err != nil {
		t.Fatal(err)
	}
	_, alloc, _ := b.Registry().ByDevice(topo.Port.Name + "-vi0")
	// What the CNI does at pod start: tell the agent the pod's IP.
	if err := alloc.SetPolicy(filter.Policy{OwnIPs: []netip.Addr{topo.PortIP}}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EFVI_SOCKET", filepath.Join(m.HostPath, softvi.SocketName))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pong(ctx, []string{"-port", "8080"}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pong: %v", err)
		}
	}()
	var p *bench.UDPPinger
	if err := topo.Fabric.Do(func() (err error) {
		p, err = bench.NewUDPPinger(netip.AddrPortFrom(topo.FabricIP, 9000), netip.AddrPortFrom(topo.PortIP, 8080), 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for deadline := time.Now().Add(10 * time.Second); len(alloc.Port.Filters()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("pong never installed its filter")
		}
	}
	lat, err := bench.MeasureRTT(p, 32, 10, 200)
	if err != nil {
		c, cerr := alloc.Port.Plane.VICounters(0)
		t.Fatalf("ping the VI pong: %v (VI counters %+v %v)", err, c, cerr)
	}
	c, err := alloc.Port.Plane.VICounters(0)
	if err != nil || c.RxPackets < 210 || c.TxPackets < 210 {
		t.Fatalf("VI counters %+v, %v: the pings did not go through the VI", c, err)
	}
	t.Logf("kernel pinger -> VI pong: p50 %v p99 %v", lat.P50, lat.P99)
}
