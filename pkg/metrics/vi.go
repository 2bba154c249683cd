package metrics

import "github.com/prometheus/client_golang/prometheus"

// Per-VI traffic counters, read from the data plane and the VIs' AF_XDP
// sockets at scrape time (labels pool, port, vi, namespace, pod; namespace
// and pod are "-" while unknown):
//
//	efvi_vi_rx_packets_total, efvi_vi_rx_bytes_total   frames delivered to the VI
//	efvi_vi_tx_packets_total, efvi_vi_tx_bytes_total   frames sent that passed the source check
//	efvi_vi_tx_spoof_drops_total                       frames sent from a source the VI does not own
//	efvi_vi_rx_redirect_errors_total                   matched frames the port could not hand to the VI
//	efvi_vi_rx_nodesc_drops_total                      dropped: no RX buffer posted (ef_vi port_rx_nodesc_drops; XSK rx_fill_ring_empty_descs)
//	efvi_vi_rx_ring_full_total                         dropped: event queue (XSK RX ring) full
//	efvi_vi_rx_invalid_descs_total, efvi_vi_tx_invalid_descs_total  bad descriptors the app posted
//	efvi_vi_filter_hits_total{filter}                  frames each of the VI's filters matched
//
// The socket counters exist only for VIs whose socket the agent holds.

// VISample is one VI's counters at scrape time.
type VISample struct {
	Pool, Port, VI, Namespace, Pod string

	RxPackets, RxBytes, TxPackets, TxBytes uint64
	TxSpoofDrops, RxRedirectErrors         uint64

	Socket                                    bool // the fields below are valid
	RxNoDescDrops, RxRingFull                 uint64
	RxInvalidDescs, TxInvalidDescs, RxDropped uint64

	Filters []FilterSample
}

// FilterSample is one filter's hit counter.
type FilterSample struct {
	Filter string // the filter spec, e.g. "udp:10.0.0.1:5000"
	Hits   uint64
}

// VISource returns the current samples; it is called once per scrape.
type VISource func() []VISample

type viTrafficCollector struct {
	src     VISource
	descs   []viDesc
	sockets []viDesc
	hits    *prometheus.Desc
}

type viDesc struct {
	d   *prometheus.Desc
	get func(*VISample) uint64
}

var viLabels = []string{"pool", "port", "vi", "namespace", "pod"}

// NewVITrafficCollector returns a collector of per-VI counters fed by src.
func NewVITrafficCollector(src VISource) prometheus.Collector {
	d := func(name, help string, get func(*VISample) uint64) viDesc {
		return viDesc{prometheus.NewDesc(name, help, viLabels, nil), get}
	}
	return &viTrafficCollector{
		src: src,
		descs: []viDesc{
			d("efvi_vi_rx_packets_total", "Frames delivered to the VI (any delivery mode).", func(s *VISample) uint64 { return s.RxPackets }),
			d("efvi_vi_rx_bytes_total", "Bytes delivered to the VI.", func(s *VISample) uint64 { return s.RxBytes }),
			d("efvi_vi_tx_packets_total", "Frames the VI sent that passed the source check.", func(s *VISample) uint64 { return s.TxPackets }),
			d("efvi_vi_tx_bytes_total", "Bytes the VI sent that passed the source check.", func(s *VISample) uint64 { return s.TxBytes }),
			d("efvi_vi_tx_spoof_drops_total", "Frames the VI sent from a source MAC/IP it does not own (dropped).", func(s *VISample) uint64 { return s.TxSpoofDrops }),
			d("efvi_vi_rx_redirect_errors_total", "Frames matched for the VI that the port could not hand to it.", func(s *VISample) uint64 { return s.RxRedirectErrors }),
		},
		sockets: []viDesc{
			d("efvi_vi_rx_nodesc_drops_total", "Frames dropped because the app had no RX buffer posted (ef_vi port_rx_nodesc_drops).", func(s *VISample) uint64 { return s.RxNoDescDrops }),
			d("efvi_vi_rx_ring_full_total", "Frames dropped because the VI's event queue was full.", func(s *VISample) uint64 { return s.RxRingFull }),
			d("efvi_vi_rx_invalid_descs_total", "Invalid RX descriptors the app posted.", func(s *VISample) uint64 { return s.RxInvalidDescs }),
			d("efvi_vi_tx_invalid_descs_total", "Invalid TX descriptors the app posted.", func(s *VISample) uint64 { return s.TxInvalidDescs }),
		},
		hits: prometheus.NewDesc("efvi_vi_filter_hits_total", "Frames each of the VI's filters matched.", append(append([]string(nil), viLabels...), "filter"), nil),
	}
}

func (c *viTrafficCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d.d
	}
	for _, d := range c.sockets {
		ch <- d.d
	}
	ch <- c.hits
}

func (c *viTrafficCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src() {
		labels := []string{s.Pool, s.Port, s.VI, dash(s.Namespace), dash(s.Pod)}
		for _, d := range c.descs {
			ch <- prometheus.MustNewConstMetric(d.d, prometheus.CounterValue, float64(d.get(&s)), labels...)
		}
		if s.Socket {
			for _, d := range c.sockets {
				ch <- prometheus.MustNewConstMetric(d.d, prometheus.CounterValue, float64(d.get(&s)), labels...)
			}
		}
		for _, f := range s.Filters {
			ch <- prometheus.MustNewConstMetric(c.hits, prometheus.CounterValue, float64(f.Hits), append(labels, f.Filter)...)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
