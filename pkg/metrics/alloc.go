package metrics

import "github.com/prometheus/client_golang/prometheus"

// Per-allocation usage against its pool's limits (pools[].limits), read at
// scrape time (labels pool, allocation, namespace, pod):
//
//	efvi_allocation_pinned_bytes  packet memory (UMEM) the allocation's VI sockets pin
//	                              in the kernel, including sockets its earlier
//	                              connections left open, plus registered regions
//	efvi_allocation_vis           live VI sockets of the allocation
//	efvi_allocation_filters       filters the allocation's SDK sessions added

// AllocationSample is one allocation's usage at scrape time.
type AllocationSample struct {
	Pool, Allocation, Namespace, Pod string

	PinnedBytes uint64
	VIs         int
	Filters     int
}

// AllocationSource returns the current samples; it is called once per scrape.
type AllocationSource func() []AllocationSample

type allocCollector struct {
	src                  AllocationSource
	pinned, vis, filters *prometheus.Desc
}

var allocLabels = []string{"pool", "allocation", "namespace", "pod"}

// NewAllocationCollector returns a collector of per-allocation usage fed by src.
func NewAllocationCollector(src AllocationSource) prometheus.Collector {
	return &allocCollector{
		src:     src,
		pinned:  prometheus.NewDesc("efvi_allocation_pinned_bytes", "Packet memory the allocation's VI sockets pin in the kernel (including sockets its earlier connections left open) plus regions registered but not yet backing a VI.", allocLabels, nil),
		vis:     prometheus.NewDesc("efvi_allocation_vis", "Live VI sockets of the allocation, including ones its earlier connections left open.", allocLabels, nil),
		filters: prometheus.NewDesc("efvi_allocation_filters", "Filters the allocation's SDK sessions added.", allocLabels, nil),
	}
}

func (c *allocCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pinned
	ch <- c.vis
	ch <- c.filters
}

func (c *allocCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src() {
		l := []string{s.Pool, s.Allocation, dash(s.Namespace), dash(s.Pod)}
		ch <- prometheus.MustNewConstMetric(c.pinned, prometheus.GaugeValue, float64(s.PinnedBytes), l...)
		ch <- prometheus.MustNewConstMetric(c.vis, prometheus.GaugeValue, float64(s.VIs), l...)
		ch <- prometheus.MustNewConstMetric(c.filters, prometheus.GaugeValue, float64(s.Filters), l...)
	}
}
