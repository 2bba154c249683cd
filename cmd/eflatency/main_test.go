package main

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/internal/efvitool/agenttest"
	"github.com/kube-efvi/kube-efvi/internal/latency"
)

// TestPongOverVI runs the pong side on a VI served by the agent's software
// backend, and pings it with a kernel UDP socket from the fabric namespace,
// as `make demo` does in a cluster.
func TestPongOverVI(t *testing.T) {
	topo := bench.NewTopology(t)
	agent := agenttest.Start(t, topo, "eflatency")
	alloc := agent.Alloc
	t.Setenv("EFVI_SOCKET", agent.Socket)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- pong(ctx, []string{"-port", "8080"}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pong: %v", err)
		}
	}()
	var p *latency.UDPPinger
	if err := topo.Fabric.Do(func() (err error) {
		p, err = latency.NewUDPPinger(netip.AddrPortFrom(topo.FabricIP, 9000), netip.AddrPortFrom(topo.PortIP, 8080), 2*time.Second)
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
	lat, err := latency.MeasureRTT(p, 32, 10, 200)
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
