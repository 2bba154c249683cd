package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/latency"
	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/kubelettest"
)

func chartFixture() []Result {
	mk := func(name string, p50, p99 time.Duration, pps64, pps1472 float64) Result {
		return Result{Name: name, RTT: latency.Latency{P50: p50, P99: p99}, PPS: pps64,
			Flood: []Flood{{Payload: 64, PPS: pps64}, {Payload: 1472, PPS: pps1472}}}
	}
	return []Result{
		mk(NameVI, 5410*time.Nanosecond, 13280*time.Nanosecond, 125e3, 163e3),
		mk(NameRawXDP, 3920*time.Nanosecond, 5810*time.Nanosecond, 279e3, 206e3),
		mk(NameKernelSpin, 8180*time.Nanosecond, 32040*time.Nanosecond, 205e3, 157e3),
		mk(NameKernelBlock, 20610*time.Nanosecond, 91390*time.Nanosecond, 433e3, 330e3),
	}
}

// TestRenderChart draws fixed figures and checks the PNG decodes at the
// documented size and is not blank.
func TestRenderChart(t *testing.T) {
	var buf bytes.Buffer
	if err := RenderChart(&buf, chartFixture(), "test"); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != ChartWidth || b.Dy() != ChartHeight {
		t.Fatalf("chart is %dx%d, want %dx%d", b.Dx(), b.Dy(), ChartWidth, ChartHeight)
	}
	// The bars are drawn in the series colours: both must appear.
	seen := [2]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			for k, c := range chartColors {
				cr, cg, cb, _ := c.RGBA()
				if r == cr && g == cg && bl == cb {
					seen[k] = true
				}
			}
		}
	}
	if !seen[0] || !seen[1] {
		t.Fatalf("bars missing from the chart (series colours seen: %v)", seen)
	}
}

func TestRenderChartErrors(t *testing.T) {
	if err := RenderChart(&bytes.Buffer{}, nil, "x"); err == nil {
		t.Fatal("no results: want an error")
	}
	if err := WriteChart(filepath.Join(t.TempDir(), "missing", "bench.png"), chartFixture(), "x"); err == nil {
		t.Fatal("missing directory: want an error")
	}
}

func TestWriteChart(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bench.png")
	if err := WriteChart(p, chartFixture(), "x"); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.DecodeConfig(f); err != nil {
		t.Fatalf("bench.png: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".chart-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// BenchmarkKubeletReregister measures the control-plane figure "kubelet
// re-registration time": a fake kubelet (pkg/deviceplugin/kubelettest)
// restarts the way the real one does (every socket in the device-plugins
// directory deleted, a new kubelet.sock), and the time from the new
// kubelet.sock listening to the plugin's Register call arriving is one
// sample. It lives here, outside pkg/deviceplugin, because it needs only
// that package's exported API; `make bench` folds its p50/p99 into the
// report's control-plane table.
func BenchmarkKubeletReregister(b *testing.B) {
	dir := kubelettest.TempDir(b)
	k := kubelettest.Start(b, dir)
	a, err := allocator.New(allocator.Options{})
	if err != nil {
		b.Fatal(err)
	}
	a.SetPool(allocator.PoolSpec{Name: "p", Resource: "efvi.io/p", Ports: []allocator.Port{{Name: "eth0", Capacity: 4, Healthy: true}}})
	m := deviceplugin.NewManager(dir, nil, nil)
	m.Add(deviceplugin.NewPlugin("p", "efvi.io/p", dir, &deviceplugin.PoolBackend{Pool: "p", Resource: "efvi.io/p", Alloc: a}, nil, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			b.Errorf("manager: %v", err)
		}
	}()
	k.WaitRegistration()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		k.Restart()
		reg := k.WaitRegistration()
		if reg.Req == nil {
			b.Fatal("the plugin did not register again after a kubelet restart")
		}
		lat = append(lat, reg.At.Sub(k.Listening))
	}
	b.StopTimer()
	s := latency.Summarize(lat)
	b.ReportMetric(float64(s.P50)/1e3, "p50-µs")
	b.ReportMetric(float64(s.P99)/1e3, "p99-µs")
}

const controlFixture = `goos: linux
BenchmarkAllocate/checkpoint-2         	    2000	   1534567 ns/op	      1200 p50-µs	      2412 p99-µs
BenchmarkAllocate/memory-2             	    2000	    334567 ns/op	       300 p50-µs	       512.5 p99-µs
BenchmarkKubeletReregister-2   	      20	   1097745 ns/op	       566.1 p50-µs	       686.7 p99-µs
PASS
pkg: github.com/kube-efvi/kube-efvi/cmd/cni
BenchmarkAddFiltersLive/vi-created-2   	2026/11/25 05:43:55 INFO data plane ready port=efvta6afda26e ifindex=1049
      20	  43533324 ns/op	        41.20 p50-ms	        53.47 p99-ms
BenchmarkAddFiltersLive/vi-exists-2    	      20	  13533324 ns/op	        11.50 p50-ms	        19.00 p99-ms
`

func TestParseControlPlane(t *testing.T) {
	figs := ParseControlPlane(controlFixture)
	if len(figs) != 5 {
		t.Fatalf("%d figures, want 5", len(figs))
	}
	if f := figs[0]; !f.Measured || f.P50us != 1200 || f.P99us != 2412 || f.N != 2000 || f.Source != "BenchmarkAllocate/checkpoint" {
		t.Errorf("Allocate: %+v", f)
	}
	if f := figs[1]; !f.Measured || f.P50us != 566.1 || f.P99us != 686.7 || f.N != 20 {
		t.Errorf("re-registration: %+v", f)
	}
	if f := figs[2]; !f.Measured || f.P50us != 41200 || f.P99us != 53470 || f.N != 20 {
		t.Errorf("CNI ADD (figures on the line after a log line): %+v", f)
	}
	if f := figs[3]; !f.Measured || f.P50us != 11500 || f.P99us != 19000 || f.Source != "BenchmarkAddFiltersLive/vi-exists" {
		t.Errorf("CNI ADD, VI exists: %+v", f)
	}
	if f := figs[4]; f.Measured || !strings.Contains(f.Source, "not measured yet") {
		t.Errorf("agent share (not in the output): %+v", f)
	}
	md := ControlPlaneMarkdown(figs)
	for _, want := range []string{"| 1.20 ms | 2.41 ms | 2000 |", "| 566 µs | 687 µs | 20 |", "| 41.20 ms | 53.47 ms | 20 |", "| — | — | — | not measured yet"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if figs := ParseControlPlane("garbage\nBenchmarkAllocate/checkpoint-2 x y z\n"); figs[0].Measured {
		t.Errorf("garbage parsed as a figure: %+v", figs[0])
	}
	// Missing benchmarks are rows that say so.
	figs = ParseControlPlane(strings.Split(controlFixture, "pkg: github.com/kube-efvi/kube-efvi/cmd/cni")[0])
	if f := figs[2]; f.Measured || !strings.Contains(f.Source, "not measured yet") {
		t.Errorf("CNI ADD without its benchmark: %+v", f)
	}
	if md := ControlPlaneMarkdown(figs); !strings.Contains(md, "| — | — | — | not measured yet") {
		t.Errorf("markdown:\n%s", md)
	}
}

// TestWriteReportFiles: the report directory gets bench.md (with the
// control-plane section), bench.json (with its figures), controlplane.md and
// a bench.png that decodes.
func TestWriteReportFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ControlPlaneFile), []byte(controlFixture), 0o644); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	if err := WriteReport(dir, chartFixture(), ThisMachine(o), o); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "bench.md"))
	if err != nil || !strings.Contains(string(md), "## Control plane") || !strings.Contains(string(md), "bench.png") {
		t.Fatalf("bench.md: %v\n%s", err, md)
	}
	var rep Report
	j, err := os.ReadFile(filepath.Join(dir, "bench.json"))
	if err == nil {
		err = json.Unmarshal(j, &rep)
	}
	if err != nil || len(rep.ControlPlane) != len(controlBenchmarks) || rep.ControlPlane[0].P99us != 2412 {
		t.Fatalf("bench.json control plane: %v %+v", err, rep.ControlPlane)
	}
	if _, err := os.Stat(filepath.Join(dir, "controlplane.md")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "bench.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if cfg, err := png.DecodeConfig(f); err != nil || cfg.Width != ChartWidth {
		t.Fatalf("bench.png: %v %+v", err, cfg)
	}
}

func FuzzParseControlPlane(f *testing.F) {
	f.Add(controlFixture)
	f.Add("BenchmarkAllocate/checkpoint-2 1 2 ns/op 3 p99-µs")
	f.Add("Benchmark- - - -")
	f.Fuzz(func(t *testing.T, s string) {
		figs := ParseControlPlane(s)
		if len(figs) != len(controlBenchmarks) {
			t.Fatalf("%d figures", len(figs))
		}
		for _, fg := range figs {
			if fg.Measured && fg.P99us <= 0 {
				t.Fatalf("measured without p99: %+v", fg)
			}
		}
		_ = ControlPlaneMarkdown(figs)
	})
}
