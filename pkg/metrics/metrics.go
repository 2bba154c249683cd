// Package metrics holds the agent's Prometheus metrics, on a registry of its
// own (never the global default one):
//
//	efvi_vis_capacity{pool,port}        VI slots offered
//	efvi_vis_allocated{pool,port}       VI slots held by allocations
//	efvi_vis_healthy{pool,port}         offered slots that are healthy
//	efvi_pool_ports{pool}               ports in the pool (0 = e.g. no Solarflare interfaces)
//	efvi_kubelet_registrations_total{pool,result}
//	efvi_kubelet_reregistrations_total{pool}   re-registrations after a kubelet restart
//	efvi_allocations_total{pool,result}
//	efvi_allocate_duration_seconds{pool}
//	efvi_config_reloads_total{result}
//
// The VI gauges are read from the allocator at scrape time, so they are
// never stale and vanish with their ports.
package metrics

import (
	"net/http"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics is the agent's metric set.
type Metrics struct {
	Registry        *prometheus.Registry
	registrations   *prometheus.CounterVec
	reregistrations *prometheus.CounterVec
	allocations     *prometheus.CounterVec
	allocateSeconds *prometheus.HistogramVec
	reloads         *prometheus.CounterVec
	poolPorts       *prometheus.GaugeVec
	// Hardware path (issue 11): why a pool's backend cannot serve VIs.
	poolUnavailable *prometheus.GaugeVec
}

// New registers everything on a new registry. stats feeds the VI gauges.
func New(stats func() []allocator.PortStats) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "efvi_kubelet_registrations_total",
			Help: "Device plugin registrations with the kubelet, by result."}, []string{"pool", "result"}),
		reregistrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "efvi_kubelet_reregistrations_total",
			Help: "Successful re-registrations after a kubelet restart or a lost plugin socket."}, []string{"pool"}),
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "efvi_allocations_total",
			Help: "Allocate calls from the kubelet, by result."}, []string{"pool", "result"}),
		allocateSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "efvi_allocate_duration_seconds",
			Help:    "Time to answer the kubelet's Allocate.",
			Buckets: []float64{100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 250e-3, 1}}, []string{"pool"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "efvi_config_reloads_total",
			Help: "Config reloads, by result."}, []string{"result"}),
		poolPorts: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "efvi_pool_ports",
			Help: "Ports currently in the pool; 0 means the pool advertises no devices (e.g. no Solarflare interfaces)."}, []string{"pool"}),
	}
	m.poolUnavailable = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "efvi_pool_unavailable",
		Help: "1 while the pool's backend cannot serve VIs on its ports (slots advertised Unhealthy); the reason label says why and what to install."}, []string{"pool", "reason"})
	m.Registry.MustRegister(m.registrations, m.reregistrations, m.allocations, m.allocateSeconds, m.reloads, m.poolPorts, m.poolUnavailable,
		newVICollector(stats), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// Registered implements deviceplugin.Observer.
func (m *Metrics) Registered(pool string, rereg bool, err error) {
	m.registrations.WithLabelValues(pool, result(err)).Inc()
	if rereg && err == nil {
		m.reregistrations.WithLabelValues(pool).Inc()
	}
}

// Allocated implements deviceplugin.Observer.
func (m *Metrics) Allocated(pool string, took time.Duration, err error) {
	m.allocations.WithLabelValues(pool, result(err)).Inc()
	m.allocateSeconds.WithLabelValues(pool).Observe(took.Seconds())
}

// ConfigReload counts a reload attempt.
func (m *Metrics) ConfigReload(err error) { m.reloads.WithLabelValues(result(err)).Inc() }

// SetPoolPorts sets a pool's port count.
func (m *Metrics) SetPoolPorts(pool string, n int) { m.poolPorts.WithLabelValues(pool).Set(float64(n)) }

// SetPoolUnavailable records why a pool's backend cannot serve VIs (nil:
// it can, and the series goes away).
func (m *Metrics) SetPoolUnavailable(pool string, why error) {
	m.poolUnavailable.DeletePartialMatch(prometheus.Labels{"pool": pool})
	if why != nil {
		m.poolUnavailable.WithLabelValues(pool, why.Error()).Set(1)
	}
}

// NewOnloadInfo is efvi_onload_info{release,interface} = 1: the Onload
// release and driver interface the agent's libciul was built from (empty
// without the hardware backend). A pod's libciul must match them.
func NewOnloadInfo(release, intf string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "efvi_onload_info",
		Help:        "Onload release and ef_vi driver interface of the agent's hardware backend (empty: none); pod images must use a libciul of the same release.",
		ConstLabels: prometheus.Labels{"release": release, "interface": intf}})
	g.Set(1)
	return g
}

// DeletePool drops a removed pool's per-pool series.
func (m *Metrics) DeletePool(pool string) {
	m.poolPorts.DeleteLabelValues(pool)
	m.poolUnavailable.DeletePartialMatch(prometheus.Labels{"pool": pool})
}

// Handler serves the registry.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

type viCollector struct {
	stats                      func() []allocator.PortStats
	capDesc, allocDesc, health *prometheus.Desc
}

func newVICollector(stats func() []allocator.PortStats) *viCollector {
	l := []string{"pool", "port"}
	return &viCollector{stats: stats,
		capDesc:   prometheus.NewDesc("efvi_vis_capacity", "VI slots offered on the port.", l, nil),
		allocDesc: prometheus.NewDesc("efvi_vis_allocated", "VI slots held by allocations on the port (may exceed capacity after a shrink).", l, nil),
		health:    prometheus.NewDesc("efvi_vis_healthy", "Offered VI slots that are healthy (link up, backend ready).", l, nil),
	}
}

func (c *viCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.capDesc
	ch <- c.allocDesc
	ch <- c.health
}

func (c *viCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.stats() {
		ch <- prometheus.MustNewConstMetric(c.capDesc, prometheus.GaugeValue, float64(s.Capacity), s.Pool, s.Port)
		ch <- prometheus.MustNewConstMetric(c.allocDesc, prometheus.GaugeValue, float64(s.Allocated), s.Pool, s.Port)
		ch <- prometheus.MustNewConstMetric(c.health, prometheus.GaugeValue, float64(s.Healthy), s.Pool, s.Port)
	}
}
