package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Target is one goal from the data-path issue and whether a run met it.
// Targets are reported, never asserted.
type Target struct {
	What  string  `json:"what"`
	Limit string  `json:"limit"`
	Ratio float64 `json:"ratio"` // 0 = could not be computed
	Met   bool    `json:"met"`
}

// Targets evaluates the latency issue's goals on results: VI RTT p50 ≤ 1.2×
// raw AF_XDP, ≤ 0.70× kernel UDP spin, ≤ 0.45× kernel UDP blocking; VI 64 B
// RX packets/s ≥ 0.8× raw AF_XDP. (The paired ratio is PairedTarget.)
func Targets(results []Result) []Target {
	by := map[string]Result{}
	for _, r := range results {
		by[r.Name] = r
	}
	vi := by[NameVI]
	var out []Target
	p50 := func(base string, limit float64) {
		t := Target{What: "VI RTT p50 ÷ " + base, Limit: fmt.Sprintf("≤ %.2f×", limit)}
		if b := by[base]; b.RTT.P50 > 0 && vi.RTT.P50 > 0 {
			t.Ratio = float64(vi.RTT.P50) / float64(b.RTT.P50)
			t.Met = t.Ratio <= limit
		}
		out = append(out, t)
	}
	p50(NameRawXDP, 1.2)
	p50(NameKernelSpin, 0.70)
	p50(NameKernelBlock, 0.45)
	t := Target{What: "VI RX Mpps (64 B) ÷ " + NameRawXDP, Limit: "≥ 0.80×"}
	if b := by[NameRawXDP]; b.PPS > 0 && vi.PPS > 0 {
		t.Ratio = vi.PPS / b.PPS
		t.Met = t.Ratio >= 0.8
	}
	return append(out, t)
}

// PairedTarget is the paired goal: VI RTT p50 ÷ raw AF_XDP, median of
// alternating blocks, ≤ 1.20×.
func PairedTarget(p *Paired) Target {
	t := Target{What: "VI RTT p50 ÷ " + NameRawXDP + ", paired (median of alternating blocks)", Limit: "≤ 1.20×"}
	if p != nil && p.Ratio > 0 {
		t.Ratio, t.Met = p.Ratio, p.Ratio <= 1.2
	}
	return t
}

// allTargets is Targets plus the paired one when there is a paired run.
func allTargets(results []Result, p *Paired) []Target {
	out := Targets(results)
	if p != nil {
		out = append([]Target{PairedTarget(p)}, out...)
	}
	return out
}

// PairedMarkdown renders the paired run: both paths, one-way times, the
// per-stage decomposition of the VI's extra time.
func PairedMarkdown(p *Paired) string {
	var b strings.Builder
	o := p.Options
	fmt.Fprintf(&b, "\n## Paired: VI and raw AF_XDP in one setup\n\n"+
		"%d block pairs of %d pings (%d warm-ups per block), the port's XDP program switched between the data plane and a plain redirect "+
		"(link update) between blocks, in ABBA order; figures are medians over blocks of each block's median. "+
		"One-way times come from the responder's timestamp (same clock as the generator): RX = generator send → responder sees the frame, "+
		"TX = responder sees it → generator sees the echo (includes the responder's turnaround).\n\n", o.Blocks, o.PerBlock, o.Warm)
	b.WriteString("| path | RTT p50 | one-way RX | one-way TX |\n|---|---|---|---|\n")
	for _, r := range []struct {
		name string
		p    PairedPath
	}{{NameVI, p.VI}, {NameRawXDP, p.Raw}} {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.name, us(r.p.RTT), us(r.p.RX), us(r.p.TX))
	}
	fmt.Fprintf(&b, "\nVI ÷ raw, median of block ratios: **%.2f×** (p10 %.2f×, p90 %.2f×).\n", p.Ratio, p.RatioP10, p.RatioP90)
	fmt.Fprintf(&b, "\nExtra time of the VI path: RX %s, TX %s, round trip %s. ", us(p.VI.RX-p.Raw.RX), us(p.VI.TX-p.Raw.TX), us(p.VI.RTT-p.Raw.RTT))
	b.WriteString("Per stage (docs/benchmarks.md): the programs' share is BenchmarkProgramCost's extra ns per frame over a plain redirect " +
		"(port + VI RX on the way in, VI TX on the way out; out/bench/programs.txt), the SDK's is the RX event + discard check " +
		"(BenchmarkCheck, BenchmarkVIPollLoop), the rest is the two extra veth hops (one NAPI poll each way).\n")
	return b.String()
}

// Machine describes where a run happened.
type Machine struct {
	Date   time.Time `json:"date"`
	Kernel string    `json:"kernel"`
	CPU    string    `json:"cpu"`
	CPUs   int       `json:"cpus"`
	Go     string    `json:"go"`
	Pinned string    `json:"pinning"`
}

// ThisMachine reads the kernel release and CPU model.
func ThisMachine(o Options) Machine {
	m := Machine{Date: time.Now().UTC(), CPUs: runtime.NumCPU(), Go: runtime.Version(), CPU: "unknown"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	m.Pinned = "unpinned"
	if o.ResponderCPU >= 0 || o.GeneratorCPU >= 0 {
		m.Pinned = fmt.Sprintf("responder on CPU %d, load generator on CPU %d", o.ResponderCPU, o.GeneratorCPU)
	}
	return m
}

// Markdown renders a run: machine facts, the table with ratios, the targets.
func Markdown(results []Result, m Machine, o Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run %s on %s (%d vCPUs), Linux %s, %s; %s.\n", m.Date.Format("2006-01-02 15:04 MST"), m.CPU, m.CPUs, m.Kernel, m.Go, m.Pinned)
	rounds := max(o.Rounds, 1)
	fmt.Fprintf(&b, "%d interleaved rounds. RTT: %d B UDP payload, %d round trips in all (%d warm-ups per round), percentiles over all rounds' samples. "+
		"RX: a %v flood per size per round from a raw AF_XDP sender, the round with the median rate shown; the drop is 1 − received/sent.\n\n",
		rounds, o.Payload, o.Pings, o.Warm, o.Window)
	b.WriteString(Table(results, NameRawXDP, NameKernelSpin, NameKernelBlock))
	b.WriteString("\nSpread over the rounds:\n\n| path | RTT p50 per round | RTT p99 per round | RX Mpps (64 B) per round |\n|---|---|---|---|\n")
	for _, r := range results {
		var p50, p99, pps []string
		for _, rd := range r.Rounds {
			p50 = append(p50, us(rd.P50))
			p99 = append(p99, us(rd.P99))
			for _, f := range rd.Flood {
				if f.Payload == 64 {
					pps = append(pps, mpps(f.PPS))
				}
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Name, strings.Join(p50, " / "), strings.Join(p99, " / "), strings.Join(pps, " / "))
	}
	b.WriteString("\n| target | limit | measured | met |\n|---|---|---|---|\n")
	for _, t := range Targets(results) {
		met := "no"
		if t.Met {
			met = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.What, t.Limit, ratio(t.Ratio, 1), met)
	}
	return b.String()
}

// Report is what bench.json holds.
type Report struct {
	Machine Machine  `json:"machine"`
	Options Options  `json:"options"`
	Results []Result `json:"results"`
	Paired  *Paired  `json:"paired,omitempty"`
	Targets []Target `json:"targets"`
	// ControlPlane has the control-plane figures when the run measured them.
	ControlPlane []ControlFigure `json:"control_plane,omitempty"`
}

// WriteReport writes bench.md, bench.json and the bench.png chart into dir
// (created if needed). When dir holds ControlPlaneFile, its control-plane
// figures are folded into controlplane.md, bench.md and bench.json.
func WriteReport(dir string, results []Result, m Machine, o Options) error {
	return WriteReportPaired(dir, results, nil, m, o)
}

// WriteReportPaired is WriteReport with the paired run (nil: none).
func WriteReportPaired(dir string, results []Result, paired *Paired, m Machine, o Options) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench output dir: %w", err)
	}
	cp, cpmd, err := writeControlPlane(dir)
	if err != nil {
		return err
	}
	md := "# kube-efvi data-path benchmark\n\n" + Markdown(results, m, o)
	if paired != nil {
		md += PairedMarkdown(paired) + "\n| target | limit | measured | met |\n|---|---|---|---|\n"
		t := PairedTarget(paired)
		met := map[bool]string{true: "yes", false: "no"}[t.Met]
		md += fmt.Sprintf("| %s | %s | %s | %s |\n", t.What, t.Limit, ratio(t.Ratio, 1), met)
	}
	md += cpmd
	md += "\n![RTT and RX rate per path](bench.png)\n"
	if err := os.WriteFile(filepath.Join(dir, "bench.md"), []byte(md), 0o644); err != nil {
		return fmt.Errorf("write bench.md: %w", err)
	}
	o.Log = nil
	j, err := json.MarshalIndent(Report{Machine: m, Options: o, Results: results, Paired: paired, Targets: allTargets(results, paired), ControlPlane: cp}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode bench.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.json"), append(j, '\n'), 0o644); err != nil {
		return fmt.Errorf("write bench.json: %w", err)
	}
	return WriteChart(filepath.Join(dir, "bench.png"), results, "kube-efvi")
}

// ControlFigure is one control-plane figure of the report, folded from the
// Go benchmark output `make bench` leaves in ControlPlaneFile.
type ControlFigure struct {
	What  string  `json:"what"`
	P50us float64 `json:"p50_us,omitempty"`
	P99us float64 `json:"p99_us,omitempty"`
	N     int     `json:"n,omitempty"`
	// Source is the benchmark that measured it, or why it was not measured.
	Source   string `json:"source"`
	Measured bool   `json:"measured"`
}

// ControlPlaneFile is the file in the output directory that holds the
// control-plane benchmarks' `go test -bench` output.
const ControlPlaneFile = "controlplane.txt"

// controlBenchmarks are the control-plane figures the report shows, in
// order, with the benchmark that measures each (name without the -GOMAXPROCS
// suffix) and how to get it when it is missing.
var controlBenchmarks = [...]struct{ what, bench, missing string }{
	{"Allocate (kubelet → device plugin, checkpointed)", "BenchmarkAllocate/checkpoint", "not measured yet: run `go test -run '^$' -bench Allocate ./pkg/deviceplugin`"},
	{"kubelet re-registration (new kubelet.sock → Register)", "BenchmarkKubeletReregister", "not measured yet: run `go test -run '^$' -bench KubeletReregister ./internal/bench`"},
	{"CNI ADD → filters live, VI created by the ADD (libcni → efvi-cni → agent → data plane)", "BenchmarkAddFiltersLive/vi-created", "not measured yet: run `go test -run '^$' -bench AddFiltersLive ./cmd/cni` (root)"},
	{"CNI ADD → filters live, VI already there", "BenchmarkAddFiltersLive/vi-exists", "not measured yet: run `go test -run '^$' -bench AddFiltersLive ./cmd/cni` (root)"},
	{"CNI ADD, the agent's share (no exec, no gRPC to the agent)", "BenchmarkAgentAdd", "not measured yet: run `go test -run '^$' -bench AgentAdd ./cmd/cni` (root)"},
}

// ParseControlPlane picks the control-plane figures out of `go test -bench`
// output (lines "BenchmarkX-2  N  ns/op  v p50-µs  v p99-µs", or -ms). A
// benchmark whose log output split its line (name, a log line, then the
// figures on the next line) is read too. Figures with no line are returned
// unmeasured, with the reason.
func ParseControlPlane(text string) []ControlFigure {
	out := make([]ControlFigure, len(controlBenchmarks))
	for i, c := range controlBenchmarks {
		out[i] = ControlFigure{What: c.what, Source: c.missing}
	}
	isCount := func(s string) bool { return s != "" && strings.Trim(s, "0123456789") == "" }
	pending := ""
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		name := ""
		switch {
		case strings.HasPrefix(f[0], "Benchmark"):
			name, f = f[0], f[1:]
			if i := strings.LastIndexByte(name, '-'); i > 0 && isCount(name[i+1:]) {
				name = name[:i]
			}
			if len(f) == 0 || !isCount(f[0]) {
				pending = name // the figures follow on a later line
				continue
			}
		case pending != "" && isCount(f[0]):
			name = pending
		default:
			continue
		}
		pending = ""
		for i, c := range controlBenchmarks {
			if name != c.bench {
				continue
			}
			fig := ControlFigure{What: c.what, Source: c.bench, Measured: true}
			fmt.Sscan(f[0], &fig.N)
			for j := 1; j+1 < len(f); j += 2 {
				var v float64
				if _, err := fmt.Sscan(f[j], &v); err != nil {
					continue
				}
				switch f[j+1] {
				case "p50-µs":
					fig.P50us = v
				case "p99-µs":
					fig.P99us = v
				case "p50-ms":
					fig.P50us = v * 1000
				case "p99-ms":
					fig.P99us = v * 1000
				}
			}
			if fig.P99us > 0 {
				out[i] = fig
			}
		}
	}
	return out
}

// ControlPlaneMarkdown renders the control-plane table.
func ControlPlaneMarkdown(figs []ControlFigure) string {
	var b strings.Builder
	b.WriteString("| control-plane operation | p50 | p99 | samples | measured by |\n|---|---|---|---|---|\n")
	for _, f := range figs {
		if !f.Measured {
			fmt.Fprintf(&b, "| %s | — | — | — | %s |\n", f.What, f.Source)
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | `%s` |\n", f.What, msOrUs(f.P50us), msOrUs(f.P99us), f.N, f.Source)
	}
	return b.String()
}

func msOrUs(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

// writeControlPlane folds dir/ControlPlaneFile (if any) into controlplane.md
// and returns the figures and their Markdown section for bench.md ("" when
// the file is missing: the run did not measure the control plane).
func writeControlPlane(dir string) ([]ControlFigure, string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, ControlPlaneFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read control-plane benchmarks: %w", err)
	}
	figs := ParseControlPlane(string(raw))
	md := "\n## Control plane\n\nGo benchmarks through real gRPC over unix sockets (fake kubelet), run by `make bench` before the data path.\n\n" + ControlPlaneMarkdown(figs)
	if err := os.WriteFile(filepath.Join(dir, "controlplane.md"), []byte("# kube-efvi control-plane figures\n"+md), 0o644); err != nil {
		return nil, "", fmt.Errorf("write controlplane.md: %w", err)
	}
	return figs, md, nil
}
