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

func TestTableFloodColumns(t *testing.T) {
	rs := []Result{
		{Name: "VI", PPS: 500e3, Drop: 0.25, Flood: []Flood{{Payload: 64, PPS: 500e3, Drop: 0.25}, {Payload: 1472, PPS: 400e3}}},
		{Name: "raw", PPS: 1e6, Flood: []Flood{{Payload: 64, PPS: 1e6}}},
	}
	out := Table(rs, "raw")
	for _, want := range []string{"RX Mpps (1472 B)", "| VI | – | – | 0.500 (25.0 % drop) | 0.400 (0.0 % drop) | – | 0.50× |", "| raw | – | – | 1.000 (0.0 % drop) | – |"} {
		if !strings.Contains(out, want) {
			t.Fatalf("table lacks %q:\n%s", want, out)
		}
	}
	tg := Targets([]Result{{Name: NameVI, PPS: 95, RTT: Latency{P50: 10}}, {Name: NameRawXDP, PPS: 100, RTT: Latency{P50: 10}}})
	if len(tg) != 4 || !tg[0].Met || tg[1].Ratio != 0 || tg[1].Met || !tg[3].Met || tg[3].Ratio != 0.95 {
		t.Fatalf("targets %+v", tg)
	}
}
