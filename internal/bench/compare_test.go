package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// TestContendersEcho checks every contender's echo and sink against the
// real kernel, so the benchmark fails when one is broken: 100 pings of
// random payloads (1..1472 bytes) must come back byte-for-byte from the
// port's address with swapped MACs, and a short flood must be counted
// (something received, never more than was sent).
func TestContendersEcho(t *testing.T) {
	topo := NewTopology(t)
	g, err := NewGenerator(topo, GenPort, echoAddr(topo))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx := context.Background()
	for _, name := range Order() {
		t.Run(name, func(t *testing.T) {
			c, err := NewContender(ctx, topo, name)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := c.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			}()
			if c.Name() != name {
				t.Fatalf("contender %q calls itself %q", name, c.Name())
			}
			resp := start(ctx, -1, c.Echo)
			payload := make([]byte, 1472)
			for i := 0; i < 100; i++ {
				p := payload[:1+i*14]
				_, _ = rand.Read(p)
				if _, err := g.Ping(p); err != nil {
					resp.stop()
					t.Fatalf("ping %d (%d bytes): %v", i, len(p), err)
				}
			}
			if err := resp.stop(); err != nil {
				t.Fatalf("echo: %v", err)
			}
			f, err := flood(ctx, g, c, Options{Window: 50 * time.Millisecond, ResponderCPU: -1, GeneratorCPU: -1}, 64)
			if err != nil {
				t.Fatal(err)
			}
			if f.Sent == 0 || f.Received == 0 || f.Received > f.Sent {
				t.Fatalf("flood: sent %d, received %d: want 0 < received <= sent", f.Sent, f.Received)
			}
			t.Logf("flood check: sent %d received %d", f.Sent, f.Received)
		})
	}
}

func echoAddr(topo *Topology) netip.AddrPort { return netip.AddrPortFrom(topo.PortIP, EchoPort) }

// TestVIEchoLoopAllocs asserts the VI echo loop (and the generator) make no
// allocation per packet: one round trip driven inline, under AllocsPerRun.
func TestVIEchoLoopAllocs(t *testing.T) {
	topo := NewTopology(t)
	g, vi := viPair(t, topo)
	rt := roundTrip(t, g, vi)
	for i := 0; i < 100; i++ { // warm: ARP-free path, ring state
		rt()
	}
	if a := testing.AllocsPerRun(1000, rt); a != 0 {
		t.Fatalf("VI echo loop: %v allocations per packet, want 0", a)
	}
}

// BenchmarkVIPollLoop is one round trip per op, with the VI echo loop driven
// inline by the same goroutine as the generator: allocs/op is the echo
// loop's (and the generator's) allocations per packet.
func BenchmarkVIPollLoop(b *testing.B) {
	topo := NewTopology(b)
	g, vi := viPair(b, topo)
	rt := roundTrip(b, g, vi)
	for i := 0; i < 100; i++ {
		rt()
	}
	b.ReportAllocs()
	b.ReportMetric(testing.AllocsPerRun(1000, rt), "allocs/pkt")
	for b.Loop() {
		rt()
	}
}

func viPair(tb testing.TB, topo *Topology) (*Generator, *viRig) {
	tb.Helper()
	g, err := NewGenerator(topo, GenPort, echoAddr(topo))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { g.Close() })
	c, err := NewVI(context.Background(), topo, echoAddr(topo))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("close VI: %v", err)
		}
	})
	return g, c.(*viRig)
}

// roundTrip returns a function that sends one 64 B ping, runs the VI echo
// loop until it has echoed it, and receives the echo.
func roundTrip(tb testing.TB, g *Generator, vi *viRig) func() {
	payload := make([]byte, 64)
	return func() {
		t0 := time.Now()
		if err := g.Send(payload); err != nil {
			tb.Fatal(err)
		}
		for polls := 0; ; polls++ {
			n, err := vi.echoStep()
			if err != nil {
				tb.Fatal(err)
			}
			if n > 0 {
				break
			}
			if polls&0xffff == 0xffff && time.Since(t0) > 2*time.Second {
				tb.Fatal("the VI never received the ping")
			}
		}
		if _, err := g.Recv(payload, t0); err != nil {
			tb.Fatal(err)
		}
		// Let the TX completion come back so RX buffers are re-posted.
		vi.echoStep()
	}
}

// BenchmarkCompare is `make bench`'s side-by-side comparison: one topology,
// one load generator, four contenders, one run whatever b.N is (it lasts far
// longer than the default -benchtime, so the framework does not repeat it;
// use -benchtime 1x). It logs the Markdown table, reports every figure as a
// metric and, with BENCH_OUT set, writes bench.md and bench.json there.
func BenchmarkCompare(b *testing.B) {
	topo := NewTopology(b)
	o := DefaultOptions()
	o.Log = b.Logf
	results, err := Compare(context.Background(), topo, o)
	if err != nil {
		b.Fatal(err)
	}
	m := ThisMachine(o)
	md := Markdown(results, m, o)
	b.Log("\n" + md)
	short := map[string]string{NameVI: "vi", NameRawXDP: "raw", NameKernelSpin: "kspin", NameKernelBlock: "kblock"}
	for _, r := range results {
		k := short[r.Name]
		b.ReportMetric(float64(r.RTT.P50), k+"_rtt_p50_ns")
		b.ReportMetric(float64(r.RTT.P99), k+"_rtt_p99_ns")
		for _, f := range r.Flood {
			b.ReportMetric(f.PPS, fmt.Sprintf("%s_rx%d_pps", k, f.Payload))
			b.ReportMetric(100*f.Drop, fmt.Sprintf("%s_drop%d_pct", k, f.Payload))
		}
	}
	for _, t := range Targets(results) {
		name := strings.NewReplacer("VI RTT p50 ÷ ", "vi_p50_vs_", "VI RX Mpps (64 B) ÷ ", "vi_pps_vs_", " ", "_").Replace(t.What)
		b.ReportMetric(t.Ratio, name+"_ratio")
	}
	paired, err := RunPaired(context.Background(), topo, DefaultPairedOptions(o))
	if err != nil {
		b.Fatal(err)
	}
	b.Log("\n" + PairedMarkdown(paired))
	b.ReportMetric(paired.Ratio, "vi_p50_vs_raw_paired_ratio")
	if dir := os.Getenv("BENCH_OUT"); dir != "" {
		if err := WriteReportPaired(dir, results, paired, m, o); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPairedRuns checks the paired benchmark's plumbing on a short run: both
// paths echo through the switched XDP program, every figure is measured
// and the one-way times add up to the RTT. No timing is asserted.
func TestPairedRuns(t *testing.T) {
	topo := NewTopology(t)
	o := DefaultPairedOptions(DefaultOptions())
	o.Blocks, o.PerBlock, o.Warm = 4, 20, 2
	p, err := RunPaired(context.Background(), topo, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, pp := range []PairedPath{p.VI, p.Raw} {
		if pp.RTT <= 0 || pp.RX <= 0 || pp.TX <= 0 {
			t.Fatalf("unmeasured figures: %+v", p)
		}
	}
	if p.Ratio <= 0 || p.RatioP10 > p.Ratio || p.RatioP90 < p.Ratio {
		t.Fatalf("ratio %v (p10 %v, p90 %v)", p.Ratio, p.RatioP10, p.RatioP90)
	}
	if md := PairedMarkdown(p); !strings.Contains(md, "paired") && !strings.Contains(md, "Paired") {
		t.Fatalf("markdown: %s", md)
	}
	if tg := PairedTarget(p); !strings.Contains(tg.What, "paired") || tg.Ratio != p.Ratio {
		t.Fatalf("target %+v", tg)
	}
}

// BenchmarkPaired runs only the paired VI vs raw AF_XDP comparison (a part
// of BenchmarkCompare) and logs its table; use -benchtime 1x.
func BenchmarkPaired(b *testing.B) {
	topo := NewTopology(b)
	p, err := RunPaired(context.Background(), topo, DefaultPairedOptions(DefaultOptions()))
	if err != nil {
		b.Fatal(err)
	}
	b.Log("\n" + PairedMarkdown(p))
	b.ReportMetric(p.Ratio, "vi_p50_vs_raw_paired_ratio")
	b.ReportMetric(p.RatioP10, "p10_ratio")
	b.ReportMetric(p.RatioP90, "p90_ratio")
	b.ReportMetric(float64(p.VI.RX-p.Raw.RX), "extra_rx_ns")
	b.ReportMetric(float64(p.VI.TX-p.Raw.TX), "extra_tx_ns")
}
