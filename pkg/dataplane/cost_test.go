package dataplane

import (
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// plainRedirect is the floor each data-plane program is compared with: an
// XDP program that only calls bpf_redirect_map(m, 0, XDP_PASS), what a
// hand-written AF_XDP or devmap forwarder does per frame.
func plainRedirect(tb testing.TB, name string, m *ebpf.Map) *ebpf.Program {
	tb.Helper()
	p, err := loadProg(name, ebpf.XDP, asm.Instructions{
		mapPtr(asm.R1, m),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, xdpPass),
		asm.FnRedirectMap.Call(),
		asm.Return(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// costRepeat is BPF_PROG_TEST_RUN's repeat count per measurement: the
// kernel reports the mean time of one run over this many.
const costRepeat = 20000

// kernelNs runs prog costRepeat times on pkt in the kernel (ingress
// ifindex 1, lo) and returns the mean nanoseconds per run.
func kernelNs(tb testing.TB, prog *ebpf.Program, pkt []byte) float64 {
	tb.Helper()
	_, d, err := prog.Benchmark(pkt, costRepeat, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return float64(d.Nanoseconds())
}

// BenchmarkProgramCost measures each data-plane program per frame in the
// kernel (BPF_PROG_TEST_RUN) as a ratio to a plain redirect measured in the
// same run: the port program with one IPv4 local filter and the VI RX
// program against a plain XSK redirect, the VI TX source check against a
// plain devmap redirect. The port program is also given against the plain
// devmap redirect, since a steal ends in one (dearer than an XSK redirect). The five programs run in alternating rounds, so a
// burst of load from the shared machine hits all of them; each ratio is the
// median of the per-round ratios, reported with its min and max (spread).
// Timings are reported, never asserted.
func BenchmarkProgramCost(b *testing.B) {
	const vi = 3
	srcMAC := [6]byte{0x02, 0xaa, 0, 0, 0, 4}
	rxPkt := udp4("10.0.0.2", "10.0.0.1", 6000, 5000).bytes()
	txF := udp4("10.0.0.5", "10.0.0.9", 1, 2)
	txF.src = srcMAC
	txPkt := txF.bytes()

	r := newRig(b, vi)
	r.install(vi, localSpec(filter.ProtoUDP, "10.0.0.1", 5000))
	rx, tx := r.viProgs(vi, srcMAC, txF.srcIP)
	// Sanity: each program takes the path being measured.
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		pkt  []byte
		want uint32
	}{{"port", r.p.port, rxPkt, xdpRedirect}, {"vi rx", rx, rxPkt, xdpPass}, {"vi tx", tx, txPkt, xdpRedirect}} {
		if got := r.run(c.prog, c.pkt, nil); got != c.want {
			b.Fatalf("%s program: %s, want %s", c.name, actName(got), actName(c.want))
		}
	}
	plainXSK := plainRedirect(b, "efvi_plain_xsk", r.m.xsks)
	plainDev := plainRedirect(b, "efvi_plain_dev", r.m.portDev)

	const rounds = 15
	var ratios [4][]float64
	var ns [5][]float64
	for i := 0; i < b.N; i++ {
		for range rounds {
			px := kernelNs(b, plainXSK, rxPkt)
			port := kernelNs(b, r.p.port, rxPkt)
			vrx := kernelNs(b, rx, rxPkt)
			pd := kernelNs(b, plainDev, txPkt)
			vtx := kernelNs(b, tx, txPkt)
			ratios[0] = append(ratios[0], port/px)
			ratios[1] = append(ratios[1], vrx/px)
			ratios[2] = append(ratios[2], vtx/pd)
			ratios[3] = append(ratios[3], port/pd)
			for j, v := range []float64{px, port, vrx, pd, vtx} {
				ns[j] = append(ns[j], v)
			}
		}
	}
	med := func(v []float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[len(s)/2]
	}
	for j, name := range []string{"port", "rx", "tx", "port-vs-dev"} {
		b.ReportMetric(med(ratios[j]), name+"-x")
	}
	for j, name := range []string{"plain-xsk", "port", "rx", "plain-dev", "tx"} {
		b.ReportMetric(med(ns[j]), name+"-ns")
	}
	for j, name := range []string{"port (1 IPv4 local filter) ÷ plain XSK redirect", "VI RX ÷ plain XSK redirect", "VI TX check ÷ plain devmap redirect",
		"port ÷ plain devmap redirect (its own redirect is a devmap one)"} {
		b.Logf("%s: median %.2f× (min %.2f, max %.2f over %d rounds)", name, med(ratios[j]), slices.Min(ratios[j]), slices.Max(ratios[j]), len(ratios[j]))
	}
}
