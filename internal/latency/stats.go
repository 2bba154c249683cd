package latency

import (
	"slices"
	"time"
)

// Latency summarises round-trip samples.
type Latency struct {
	N    int           `json:"n"`
	Min  time.Duration `json:"min_ns"`
	P50  time.Duration `json:"p50_ns"`
	P95  time.Duration `json:"p95_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
	Mean time.Duration `json:"mean_ns"`
}

// Summarize sorts samples in place and returns their summary.
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	q := func(p float64) time.Duration {
		i := int(p * float64(len(samples)-1))
		return samples[i]
	}
	return Latency{
		N: len(samples), Min: samples[0], Max: samples[len(samples)-1],
		P50: q(0.50), P95: q(0.95), P99: q(0.99),
		Mean: sum / time.Duration(len(samples)),
	}
}
