package main

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// BenchmarkAddFiltersLive measures CNI ADD through libcni and the real
// binaries (the test main plugin, then efvi-cni, then the agent over gRPC,
// PodResources over gRPC, the attachment record, the filters in the data
// plane) until the filters are live: Attach installs them synchronously, so
// they steer traffic when ADD returns. Each ADD is followed by an untimed
// DEL. Reports p50/p99 in ms (target p99 ≤ 20 ms; never asserted).
//
// "vi-created": the slot's data-plane VI (veth pair + XDP) is created by
// the ADD, as for a pod whose SDK has not opened its VI yet. "vi-exists":
// another filter holds the VI, so ADD only adds filters.
func BenchmarkAddFiltersLive(b *testing.B) {
	for _, warm := range []bool{false, true} {
		name := "vi-created"
		if warm {
			name = "vi-exists"
		}
		b.Run(name, func(b *testing.B) {
			n := newNode(b)
			p := n.newPod("bench", "p", 3, []string{n.topo.PortIP.String() + "/24"}, "udp:5000 tcp:8080")
			if warm {
				if err := p.alloc.SetPolicy(filter.Policy{OwnIPs: []netip.Addr{n.topo.PortIP}}); err != nil {
					b.Fatal(err)
				}
				hold, _ := filter.Parse("udp:" + n.topo.PortIP.String() + ":9999")
				if _, err := p.alloc.Attach(context.Background(), "hold/eth9", []filter.Spec{hold}); err != nil {
					b.Fatal(err)
				}
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if _, err := n.add(p); err != nil {
					b.Fatalf("ADD: %v", err)
				}
				lat = append(lat, time.Since(start))
				b.StopTimer()
				if err := n.port.CheckAttachment(p.rt.ContainerID + "/eth0"); err != nil {
					b.Fatalf("filters not live after ADD: %v", err)
				}
				if err := n.del(p); err != nil {
					b.Fatalf("DEL: %v", err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			report(b, lat)
		})
	}
}

// BenchmarkAgentAdd is the agent's share of ADD (no exec, no gRPC to the
// agent): PodResources over gRPC, the record, the VI and its filters.
func BenchmarkAgentAdd(b *testing.B) {
	n := newNode(b)
	p := n.newPod("bench", "p", 3, []string{n.topo.PortIP.String() + "/24"}, "udp:5000 tcp:8080")
	att := &cniapi.Attachment{Network: netName, ContainerID: p.rt.ContainerID, IfName: "eth0", PodNamespace: "bench", PodName: "p",
		PodUID: p.uid, IPs: []netip.Addr{n.topo.PortIP}}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := n.svc.Add(context.Background(), att); err != nil {
			b.Fatalf("ADD: %v", err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if _, err := n.svc.Del(context.Background(), att); err != nil {
			b.Fatalf("DEL: %v", err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	report(b, lat)
}

func report(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	q := func(f float64) float64 { return float64(lat[int(f*float64(len(lat)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}
