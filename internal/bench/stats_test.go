package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/latency"
)

func TestTableRatios(t *testing.T) {
	rs := []Result{
		{Name: "VI", RTT: latency.Latency{P50: 3 * time.Microsecond, P99: 9 * time.Microsecond}, PPS: 900e3},
		{Name: "raw", RTT: latency.Latency{P50: 2 * time.Microsecond}, PPS: 1e6},
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
	tg := Targets([]Result{{Name: NameVI, PPS: 95, RTT: latency.Latency{P50: 10}}, {Name: NameRawXDP, PPS: 100, RTT: latency.Latency{P50: 10}}})
	if len(tg) != 4 || !tg[0].Met || tg[1].Ratio != 0 || tg[1].Met || !tg[3].Met || tg[3].Ratio != 0.95 {
		t.Fatalf("targets %+v", tg)
	}
}
