package dataplane

import (
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// BenchmarkPortProgram measures the port program per frame in the kernel
// (BPF_PROG_TEST_RUN with Repeat), reported as ns/frame.
func BenchmarkPortProgram(b *testing.B) {
	match := udp4("10.0.0.2", "10.0.0.1", 6000, 5000).bytes()
	miss := udp4("10.0.0.2", "10.0.0.9", 6000, 5000)
	miss.vlan = 7
	cases := []struct {
		name    string
		filters []filt
		pkt     []byte
	}{
		{"idle", nil, match},
		{"local-hit", []filt{{1, localSpec(filter.ProtoUDP, "10.0.0.1", 5000)}}, match},
		{"tagged-miss-all-levels", []filt{
			{1, fullSpec(filter.ProtoUDP, "10.0.0.1", 5000, "10.0.0.3", 1)},
			{1, localSpec(filter.ProtoUDP, "10.0.0.1", 5000)},
			{1, macSpec(macPeer)},
			{1, filter.Spec{Match: filter.MatchEtherType, EtherType: 0x88b5}},
			{1, filter.Spec{Match: filter.MatchIPProto, IPProto: filter.ProtoTCP}},
			{1, filter.Spec{Match: filter.MatchMulticastAll}},
			{1, filter.Spec{Match: filter.MatchMulticastMismatch}},
		}, miss.bytes()},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			r := newRig(b, 1)
			for _, f := range c.filters {
				r.install(f.vi, f.spec)
			}
			// The kernel reports the mean time per run of the program.
			var sum time.Duration
			for i := 0; i < b.N; i++ {
				_, d, err := r.p.port.Benchmark(c.pkt, 100000, nil)
				if err != nil {
					b.Fatal(err)
				}
				sum += d
			}
			b.ReportMetric(float64(sum.Nanoseconds())/float64(b.N), "kernel-ns/frame")
		})
	}
}
