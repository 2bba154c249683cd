package bench

import (
	"strings"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Microsecond)
	}
	l := Summarize(s)
	if l.N != 100 || l.Min != time.Microsecond || l.Max != 100*time.Microsecond {
		t.Fatalf("summary %+v", l)
	}
	if l.P50 != 50*time.Microsecond || l.P99 != 99*time.Microsecond {
		t.Fatalf("p50 %v p99 %v", l.P50, l.P99)
	}
	if (Summarize(nil) != Latency{}) {
		t.Fatal("empty summary not zero")
	}
}

func TestTableRatios(t *testing.T) {
	rs := []Result{
		{Name: "VI", RTT: Latency{P50: 3 * time.Microsecond, P99: 9 * time.Microsecond}, PPS: 900e3},
		{Name: "raw", RTT: Latency{P50: 2 * time.Microsecond}, PPS: 1e6},
	}
	out := Table(rs, "raw", "absent")
	for _, want := range []string{"| VI | 3.00 µs | 9.00 µs | 0.900 | 1.50× | 0.90× |", "p50 ÷ raw", "Mpps ÷ raw"} {
		if !strings.Contains(out, want) {
			t.Fatalf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "absent") {
		t.Fatalf("missing baseline got a column:\n%s", out)
	}
}
