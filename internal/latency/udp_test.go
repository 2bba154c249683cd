package latency_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/internal/latency"
)

// TestKernelUDPRoundTrip checks the kernel baselines work at all: real
// datagrams cross the topology and come back, for both reader kinds.
func TestKernelUDPRoundTrip(t *testing.T) {
	topo := bench.NewTopology(t)
	for _, spin := range []bool{true, false} {
		lat := kernelUDPRTT(t, topo, spin, 10, 200)
		if lat.N != 200 || lat.Min <= 0 || lat.P99 < lat.P50 {
			t.Fatalf("spin=%v: implausible summary %+v", spin, lat)
		}
		t.Logf("kernel UDP spin=%v: p50 %v p99 %v", spin, lat.P50, lat.P99)
	}
}

// kernelUDPRTT runs an echo on the port and a spinning pinger in the fabric.
func kernelUDPRTT(tb testing.TB, topo *bench.Topology, spin bool, warm, n int) latency.Latency {
	tb.Helper()
	echoAddr := netip.AddrPortFrom(topo.PortIP, 7001)
	fd, err := latency.UDPSocket(echoAddr, !spin)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- latency.UDPEcho(ctx, fd, spin) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("echo: %v", err)
		}
	}()
	var p *latency.UDPPinger
	if err := topo.Fabric.Do(func() (err error) {
		p, err = latency.NewUDPPinger(netip.AddrPortFrom(topo.FabricIP, 7002), echoAddr, 2*time.Second)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	lat, err := latency.MeasureRTT(p, 64, warm, n)
	if err != nil {
		tb.Fatal(err)
	}
	return lat
}
