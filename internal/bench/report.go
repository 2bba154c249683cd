package bench

import (
	"bufio"
	"encoding/json"
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

// Targets evaluates the goals on results: VI RTT p50 ≤ 1.1× raw
// AF_XDP, ≤ 0.75× kernel UDP spin, ≤ 0.15× kernel UDP blocking; VI 64 B RX
// packets/s ≥ 0.9× raw AF_XDP.
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
	p50(NameRawXDP, 1.1)
	p50(NameKernelSpin, 0.75)
	p50(NameKernelBlock, 0.15)
	t := Target{What: "VI RX Mpps (64 B) ÷ " + NameRawXDP, Limit: "≥ 0.90×"}
	if b := by[NameRawXDP]; b.PPS > 0 && vi.PPS > 0 {
		t.Ratio = vi.PPS / b.PPS
		t.Met = t.Ratio >= 0.9
	}
	return append(out, t)
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
	Targets []Target `json:"targets"`
}

// WriteReport writes bench.md and bench.json into dir (created if needed).
func WriteReport(dir string, results []Result, m Machine, o Options) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench output dir: %w", err)
	}
	md := "# kube-efvi data-path benchmark\n\n" + Markdown(results, m, o)
	if err := os.WriteFile(filepath.Join(dir, "bench.md"), []byte(md), 0o644); err != nil {
		return fmt.Errorf("write bench.md: %w", err)
	}
	o.Log = nil
	j, err := json.MarshalIndent(Report{Machine: m, Options: o, Results: results, Targets: Targets(results)}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode bench.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.json"), append(j, '\n'), 0o644); err != nil {
		return fmt.Errorf("write bench.json: %w", err)
	}
	return nil
}
