package latency

import (
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
