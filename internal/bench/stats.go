// Package bench measures kube-efvi's software VI against the alternatives a
// low-latency team would use instead — raw AF_XDP on the port, kernel UDP with
// a busy-spinning reader and kernel UDP with a blocking reader — on one
// topology in one run, and prints the figures as a table with ratios.
//
// It is driven by benchmarks (`make bench`), never by timed tests: the
// machines are shared and noisy, so figures are reported, not asserted.
package bench

import (
	"fmt"
	"strings"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/latency"
)

// Result is one contender's figures. Zero fields were not measured.
type Result struct {
	Name string          `json:"name"`
	RTT  latency.Latency `json:"rtt"`
	PPS  float64         `json:"rx_pps_64"` // received 64-byte packets per second under flood
	Drop float64         `json:"drop_64"`   // fraction of the flood the receiver did not get
	// Flood has the figures of every flood size (64 B is also in PPS/Drop):
	// the round with the median rate.
	Flood []Flood `json:"flood,omitempty"`
	// Rounds are the per-round figures (the spread behind the summary).
	Rounds []Round `json:"rounds,omitempty"`
}

// Round is one contender's figures in one round of a comparison.
type Round struct {
	P50   time.Duration `json:"rtt_p50_ns"`
	P99   time.Duration `json:"rtt_p99_ns"`
	Flood []Flood       `json:"flood,omitempty"`
}

// Flood is one flood window at one UDP payload size.
type Flood struct {
	Payload  int           `json:"payload_bytes"`
	Sent     uint64        `json:"sent"`
	Received uint64        `json:"received"`
	Window   time.Duration `json:"window_ns"`
	PPS      float64       `json:"rx_pps"`
	SentPPS  float64       `json:"sent_pps"`
	Drop     float64       `json:"drop"`
}

// FloodAt returns the flood figures at payload bytes, if measured.
func (r Result) FloodAt(payload int) (Flood, bool) {
	for _, f := range r.Flood {
		if f.Payload == payload {
			return f, true
		}
	}
	return Flood{}, false
}

// Table renders results as Markdown. Ratios are against the named baseline
// rows (e.g. "raw AF_XDP"); a missing baseline leaves its ratio column out.
// RX rates show the drop fraction when a flood was measured; a 1472 B column
// appears when any result has one.
func Table(results []Result, baselines ...string) string {
	var b strings.Builder
	byName := map[string]Result{}
	big := false
	for _, r := range results {
		byName[r.Name] = r
		if _, ok := r.FloodAt(1472); ok {
			big = true
		}
	}
	hdr := []string{"path", "RTT p50", "RTT p99", "RX Mpps (64 B)"}
	if big {
		hdr = append(hdr, "RX Mpps (1472 B)")
	}
	var bases []Result
	for _, n := range baselines {
		if r, ok := byName[n]; ok {
			bases = append(bases, r)
			hdr = append(hdr, "p50 ÷ "+n)
		}
	}
	if len(bases) > 0 && bases[0].PPS > 0 {
		hdr = append(hdr, "Mpps ÷ "+bases[0].Name)
	}
	fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(hdr, " | "), strings.Repeat("---|", len(hdr)))
	for _, r := range results {
		f64, ok := r.FloodAt(64)
		if !ok {
			f64 = Flood{PPS: r.PPS, Drop: r.Drop}
		}
		row := []string{r.Name, us(r.RTT.P50), us(r.RTT.P99), rate(f64, ok)}
		if big {
			f, ok := r.FloodAt(1472)
			row = append(row, rate(f, ok))
		}
		for _, base := range bases {
			row = append(row, ratio(float64(r.RTT.P50), float64(base.RTT.P50)))
		}
		if len(bases) > 0 && bases[0].PPS > 0 {
			row = append(row, ratio(r.PPS, bases[0].PPS))
		}
		fmt.Fprintf(&b, "| %s |\n", strings.Join(row, " | "))
	}
	return b.String()
}

// rate is "Mpps" or, for a measured flood, "Mpps (drop %)".
func rate(f Flood, measured bool) string {
	if !measured || f.PPS == 0 {
		return mpps(f.PPS)
	}
	return fmt.Sprintf("%s (%.1f %% drop)", mpps(f.PPS), 100*f.Drop)
}

func us(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f µs", float64(d)/1e3)
}

func mpps(p float64) string {
	if p == 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f", p/1e6)
}

func ratio(a, b float64) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
