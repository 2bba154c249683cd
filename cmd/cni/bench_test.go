package main

import (
	"slices"
	"testing"
	"time"
)

// BenchmarkAddFiltersLive measures CNI ADD through libcni and the real
// binaries (the test main plugin, then efvi-cni, then the agent over gRPC,
// PodResources over gRPC, the attachment record, the filter in the data
// plane) until the filter is live: Attach installs it synchronously, so it
// steers traffic when ADD returns. Each ADD is followed by an untimed DEL.
// Reports p50/p99 in ms (target p99 ≤ 20 ms; never asserted).
func BenchmarkAddFiltersLive(b *testing.B) {
	n := newNode(b, 244)
	p := n.newPod("bench", "p", 3, []string{n.topo.PortIP.String() + "/24"}, "udp:5000 tcp:8080")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := n.add(p); err != nil {
			b.Fatalf("ADD: %v", err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if len(n.port.Filters()) != 2 {
			b.Fatalf("filters after ADD: %v", n.port.Filters())
		}
		if err := n.del(p); err != nil {
			b.Fatalf("DEL: %v", err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
