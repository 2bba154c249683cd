package metrics

import (
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// gather collects c through a registry (which checks descriptors, label
// consistency and duplicates) and flattens the result to
// "name{k=v,...}" → value.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(ls)
			out[f.GetName()+"{"+strings.Join(ls, ",")+"}"] = m.GetCounter().GetValue()
		}
	}
	return out
}

func TestVITrafficCollector(t *testing.T) {
	samples := []VISample{
		{Pool: "fast", Port: "eth1", VI: "eth1-vi0", Namespace: "ns", Pod: "p",
			RxPackets: 5, RxBytes: 500, TxPackets: 2, TxBytes: 120, TxSpoofDrops: 1,
			Socket: true, RxNoDescDrops: 3, RxRingFull: 4,
			Filters: []FilterSample{{Filter: "udp:10.0.0.1:5000", Hits: 5}}},
		{Pool: "fast", Port: "eth1", VI: "eth1-vi1", RxPackets: 1}, // no socket, pod unknown
	}
	got := gather(t, NewVITrafficCollector(func() []VISample { return samples }))
	vi0 := "namespace=ns,pod=p,pool=fast,port=eth1,vi=eth1-vi0}"
	vi1 := "namespace=-,pod=-,pool=fast,port=eth1,vi=eth1-vi1}"
	want := map[string]float64{
		"efvi_vi_rx_packets_total{" + vi0:                           5,
		"efvi_vi_rx_bytes_total{" + vi0:                             500,
		"efvi_vi_tx_packets_total{" + vi0:                           2,
		"efvi_vi_tx_bytes_total{" + vi0:                             120,
		"efvi_vi_tx_spoof_drops_total{" + vi0:                       1,
		"efvi_vi_rx_redirect_errors_total{" + vi0:                   0,
		"efvi_vi_rx_nodesc_drops_total{" + vi0:                      3,
		"efvi_vi_rx_ring_full_total{" + vi0:                         4,
		"efvi_vi_rx_invalid_descs_total{" + vi0:                     0,
		"efvi_vi_tx_invalid_descs_total{" + vi0:                     0,
		"efvi_vi_filter_hits_total{filter=udp:10.0.0.1:5000," + vi0: 5,
		"efvi_vi_rx_packets_total{" + vi1:                           1,
		"efvi_vi_rx_bytes_total{" + vi1:                             0,
		"efvi_vi_tx_packets_total{" + vi1:                           0,
		"efvi_vi_tx_bytes_total{" + vi1:                             0,
		"efvi_vi_tx_spoof_drops_total{" + vi1:                       0,
		"efvi_vi_rx_redirect_errors_total{" + vi1:                   0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d series, want %d (socket counters only for the VI with a socket): %v", len(got), len(want), got)
	}
}
