// Package introspect is the agent's diagnostics: what efvictl shows (the
// onload_stackdump, onload_tcpdump and ethtool -S of kube-efvi). An
// Inspector reads the agent's registry of ports and allocations, the data
// plane's counters and filter hits, and the XDP_STATISTICS of the AF_XDP
// socket the agent holds for each VI; it captures a VI's frames through the
// data plane's capture hook (dataplane.Capturer). A Server publishes it as
// HTTP+JSON on a root-only unix socket; Client is efvictl's side.
//
// Endpoints (GET; errors are {"error": "..."} with 400/404/409/500/501):
//
//	/v1/ports                   ports and their data planes
//	/v1/vis?target=T            VIs with veths, allocation, pod
//	/v1/filters?target=T        filters with owner and hit counter
//	/v1/stats?target=T          per-VI counters
//	/v1/capture?target=T&snaplen=N&count=N&timeout=D
//	                            a pcap stream (LINKTYPE_ETHERNET) of the VIs' RX
//	                            and TX frames; trailers Efvi-Rx, Efvi-Tx and
//	                            Efvi-Dropped count what was written and lost
//	/metrics                    the per-VI Prometheus counters
//
// A target is empty (everything), a VI's device id "<port>-vi<N>", or a pod
// "namespace/name" or "name" (pods are known once the CNI records which pod
// holds an allocation: Config.PodNamer). Unknown targets get 404 with a
// message naming what exists.
package introspect

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
	"github.com/kube-efvi/kube-efvi/pkg/metrics"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// PodNamer says which pod holds an allocation (the CNI records it). ok is
// false while unknown.
type PodNamer func(allocationID string) (namespace, name string, ok bool)

// Config configures an Inspector.
type Config struct {
	Registry *viservice.Registry
	PodNamer PodNamer // nil: pods unknown ("-")
	Logger   *slog.Logger
}

// Inspector answers diagnostics queries. It is safe for concurrent use.
type Inspector struct {
	reg  *viservice.Registry
	pods PodNamer
	log  *slog.Logger

	mu        sync.Mutex
	capturers map[*dataplane.Port]*dataplane.Capturer
	closed    bool
}

// New returns an Inspector over cfg.Registry.
func New(cfg Config) *Inspector {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PodNamer == nil {
		cfg.PodNamer = func(string) (string, string, bool) { return "", "", false }
	}
	if cfg.Registry == nil {
		cfg.Registry = viservice.NewRegistry()
	}
	return &Inspector{reg: cfg.Registry, pods: cfg.PodNamer, log: cfg.Logger.With("component", "introspect"),
		capturers: map[*dataplane.Port]*dataplane.Capturer{}}
}

func notFound(format string, a ...any) error {
	return &api.Error{Status: http.StatusNotFound, Msg: fmt.Sprintf(format, a...)}
}

// vi is one VI as the inspector resolves it.
type vi struct {
	port       *viservice.Port
	slot       uint32
	alloc      *viservice.Allocation // nil: no allocation claims it
	allocID    string
	ns, pod    string
	dataPlane  *dataplane.VI // nil: no data-plane VI for the slot
	device     string
	namespaced string // "ns/pod" or ""
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// all lists every VI slot of every allocation plus unclaimed data-plane VIs.
func (in *Inspector) all() []vi {
	var out []vi
	claimed := map[*viservice.Port]map[uint32]bool{}
	for _, ref := range in.reg.Allocations() {
		a := ref.Allocation
		ns, pod, ok := in.pods(ref.ID)
		if !ok {
			ns, pod = "", ""
		}
		if claimed[a.Port] == nil {
			claimed[a.Port] = map[uint32]bool{}
		}
		for _, s := range a.Slots() {
			claimed[a.Port][s] = true
			v := vi{port: a.Port, slot: s, alloc: a, allocID: ref.ID, ns: ns, pod: pod, device: allocator.DeviceID(a.Port.Name, int(s))}
			if pod != "" {
				v.namespaced = ns + "/" + pod
			}
			v.dataPlane, _ = a.Port.Plane.VI(s)
			out = append(out, v)
		}
	}
	for _, p := range in.reg.Ports() {
		ids, _ := p.DataPlaneVIs()
		for _, id := range ids {
			if claimed[p][id] {
				continue
			}
			v := vi{port: p, slot: id, device: allocator.DeviceID(p.Name, int(id))}
			v.dataPlane, _ = p.Plane.VI(id)
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(x, y vi) int {
		return cmp.Or(strings.Compare(x.port.Name, y.port.Name), cmp.Compare(x.slot, y.slot))
	})
	return out
}

// resolve picks the VIs a target names (see the package doc).
func (in *Inspector) resolve(target string) ([]vi, error) {
	all := in.all()
	if target == "" {
		return all, nil
	}
	if port, n, ok := allocator.ParseDeviceID(target); ok {
		if _, known := in.reg.Port(port); known {
			for _, v := range all {
				if v.port.Name == port && v.slot == uint32(n) {
					return []vi{v}, nil
				}
			}
			var have []string
			for _, v := range all {
				if v.port.Name == port {
					have = append(have, v.device)
				}
			}
			if len(have) == 0 {
				return nil, notFound("no VI %s: port %s has no VIs in use", target, port)
			}
			return nil, notFound("no VI %s: VIs on port %s are %s", target, port, strings.Join(have, ", "))
		}
	}
	var hit []vi
	var pods []string
	seen := map[string]bool{}
	for _, v := range all {
		if v.namespaced == "" {
			continue
		}
		if !seen[v.namespaced] {
			seen[v.namespaced] = true
			pods = append(pods, v.namespaced)
		}
		if target == v.namespaced || (!strings.Contains(target, "/") && target == v.pod) {
			hit = append(hit, v)
		}
	}
	if len(hit) > 0 {
		owners := map[string]bool{}
		for _, v := range hit {
			owners[v.namespaced] = true
		}
		if len(owners) > 1 {
			names := slices.Sorted(mapsKeys(owners))
			return nil, &api.Error{Status: http.StatusBadRequest, Msg: fmt.Sprintf("pod name %q is ambiguous: %s; give namespace/name", target, strings.Join(names, ", "))}
		}
		return hit, nil
	}
	var devs []string
	for _, v := range all {
		devs = append(devs, v.device)
	}
	msg := fmt.Sprintf("no pod or VI %q on this node", target)
	switch {
	case len(pods) > 0:
		msg += "; pods with VIs: " + strings.Join(pods, ", ")
	case len(all) > 0:
		msg += "; no pod identities are known yet (the CNI records them)"
	}
	if len(devs) > 0 {
		msg += "; VIs: " + strings.Join(devs, ", ")
	} else {
		msg += "; no VIs are in use"
	}
	if _, _, ok := allocator.ParseDeviceID(target); ok {
		var ports []string
		for _, p := range in.reg.Ports() {
			ports = append(ports, p.Name)
		}
		msg += fmt.Sprintf("; ports: %s", strings.Join(ports, ", "))
	}
	return nil, notFound("%s", msg)
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Ports lists the ports.
func (in *Inspector) Ports() []api.PortInfo {
	var out []api.PortInfo
	for _, p := range in.reg.Ports() {
		pi := api.PortInfo{Name: p.Name, MAC: macString(p.MAC), MTU: p.MTU, DataPlane: "other"}
		if dp, ok := p.Plane.(*dataplane.Port); ok {
			st := dp.Status()
			pi.Ifindex, pi.XDPProgramID, pi.VIs = st.Ifindex, st.ProgramID, len(st.VIs)
			pi.DataPlane = "detached"
			if st.Attached {
				pi.DataPlane = "attached"
			}
			slices.Sort(st.Capturing)
			for _, id := range st.Capturing {
				pi.Capturing = append(pi.Capturing, allocator.DeviceID(p.Name, int(id)))
			}
		} else if ids, ok := p.DataPlaneVIs(); ok {
			pi.VIs = len(ids)
		}
		out = append(out, pi)
	}
	return out
}

func macString(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// VIs lists the VIs a target names.
func (in *Inspector) VIs(target string) ([]api.VIInfo, error) {
	vis, err := in.resolve(target)
	if err != nil {
		return nil, err
	}
	out := make([]api.VIInfo, 0, len(vis))
	for _, v := range vis {
		info := api.VIInfo{Device: v.device, Port: v.port.Name, Slot: v.slot, Pool: "-", Allocation: dash(v.allocID),
			Namespace: dash(v.ns), Pod: dash(v.pod), DataPlane: v.dataPlane != nil}
		if v.alloc != nil {
			info.Pool = v.alloc.Pool
			_, info.Socket, _ = v.alloc.SocketStats(v.slot)
			u := v.alloc.Usage()
			info.AllocationPinnedBytes, info.AllocationVIs, info.AllocationFilters = u.PinnedBytes, u.VIs, u.Filters
		}
		if v.dataPlane != nil {
			info.Veth, info.PeerVeth = v.dataPlane.Name(), v.dataPlane.PeerName()
		}
		out = append(out, info)
	}
	return out, nil
}

// Filters lists the filters of the VIs a target names.
func (in *Inspector) Filters(target string) ([]api.FilterInfo, error) {
	vis, err := in.resolve(target)
	if err != nil {
		return nil, err
	}
	type key struct {
		port *viservice.Port
		slot uint32
	}
	want := map[key]vi{}
	var ports []*viservice.Port
	for _, v := range vis {
		if _, ok := want[key{v.port, v.slot}]; !ok && !slices.Contains(ports, v.port) {
			ports = append(ports, v.port)
		}
		want[key{v.port, v.slot}] = v
	}
	out := []api.FilterInfo{}
	for _, p := range ports {
		for _, f := range p.FilterOwners() {
			v, ok := want[key{p, uint32(f.Owner)}]
			if !ok {
				continue
			}
			fi := api.FilterInfo{Device: v.device, Port: p.Name, Slot: v.slot, Namespace: dash(v.ns), Pod: dash(v.pod),
				Spec: f.Spec.String(), Owner: "session", Attachment: f.Attachment, Cookie: uint64(f.Cookie)}
			if f.Attachment != "" {
				fi.Owner = "cni"
			}
			hits, err := p.Plane.FilterHits(dataplane.Handle{VI: v.slot, Spec: f.Spec})
			if err != nil {
				fi.HitsError = err.Error()
			}
			fi.Hits = hits
			out = append(out, fi)
		}
	}
	slices.SortFunc(out, func(x, y api.FilterInfo) int {
		return cmp.Or(strings.Compare(x.Port, y.Port), cmp.Compare(x.Slot, y.Slot), cmp.Compare(x.Cookie, y.Cookie))
	})
	return out, nil
}

// Stats reads the counters of the VIs a target names that exist in the
// data plane.
func (in *Inspector) Stats(target string) ([]api.VIStats, error) {
	vis, err := in.resolve(target)
	if err != nil {
		return nil, err
	}
	out := []api.VIStats{}
	var missing []string
	for _, v := range vis {
		if v.dataPlane == nil {
			missing = append(missing, v.device)
			continue
		}
		s, err := in.stats(v)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if len(out) == 0 && target != "" && len(missing) > 0 {
		return nil, notFound("%s: %s has no VI in the data plane yet (the pod has not opened it and the CNI installed no filters)", target, strings.Join(missing, ", "))
	}
	return out, nil
}

func (in *Inspector) stats(v vi) (api.VIStats, error) {
	s := api.VIStats{Device: v.device, Port: v.port.Name, Slot: v.slot, Pool: "-", Allocation: dash(v.allocID), Namespace: dash(v.ns), Pod: dash(v.pod)}
	c, err := v.port.Plane.VICounters(v.slot)
	if err != nil {
		return s, fmt.Errorf("counters of %s: %w", v.device, err)
	}
	s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes = c.RxPackets, c.RxBytes, c.TxPackets, c.TxBytes
	s.TxSpoofDrops, s.RxRedirectErrors = c.TxSpoofDrops, c.RxRedirectErrors
	if v.alloc != nil {
		s.Pool = v.alloc.Pool
		ks, live, err := v.alloc.SocketStats(v.slot)
		switch {
		case err != nil:
			s.SocketError = err.Error()
		case live:
			s.Socket = &api.SocketStats{RxNoDescDrops: ks.RxFillRingEmptyDescs, RxRingFull: ks.RxRingFull, RxDropped: ks.RxDropped,
				RxInvalidDescs: ks.RxInvalidDescs, TxInvalidDescs: ks.TxInvalidDescs, TxRingEmptyDescs: ks.TxRingEmptyDescs}
		}
	}
	return s, nil
}

// VISamples feeds metrics.NewVITrafficCollector: every data-plane VI's
// counters and filter hits. Errors are logged and the VI skipped.
func (in *Inspector) VISamples() []metrics.VISample {
	stats, err := in.Stats("")
	if err != nil {
		in.log.Warn("metrics: read VI counters", "err", err)
		return nil
	}
	filters, err := in.Filters("")
	if err != nil {
		in.log.Warn("metrics: read filters", "err", err)
	}
	byDev := map[string][]metrics.FilterSample{}
	for _, f := range filters {
		if f.HitsError == "" {
			byDev[f.Device] = append(byDev[f.Device], metrics.FilterSample{Filter: f.Spec, Hits: f.Hits})
		}
	}
	out := make([]metrics.VISample, 0, len(stats))
	for _, s := range stats {
		m := metrics.VISample{Pool: s.Pool, Port: s.Port, VI: s.Device, Namespace: s.Namespace, Pod: s.Pod,
			RxPackets: s.RxPackets, RxBytes: s.RxBytes, TxPackets: s.TxPackets, TxBytes: s.TxBytes,
			TxSpoofDrops: s.TxSpoofDrops, RxRedirectErrors: s.RxRedirectErrors, Filters: byDev[s.Device]}
		if s.Socket != nil {
			m.Socket = true
			m.RxNoDescDrops, m.RxRingFull = s.Socket.RxNoDescDrops, s.Socket.RxRingFull
			m.RxInvalidDescs, m.TxInvalidDescs, m.RxDropped = s.Socket.RxInvalidDescs, s.Socket.TxInvalidDescs, s.Socket.RxDropped
		}
		out = append(out, m)
	}
	return out
}

// AllocationSamples feeds metrics.NewAllocationCollector: every registered
// allocation's usage against its limits.
func (in *Inspector) AllocationSamples() []metrics.AllocationSample {
	var out []metrics.AllocationSample
	for _, ref := range in.reg.Allocations() {
		ns, pod, _ := in.pods(ref.ID)
		u := ref.Allocation.Usage()
		out = append(out, metrics.AllocationSample{Pool: ref.Allocation.Pool, Allocation: ref.ID, Namespace: ns, Pod: pod,
			PinnedBytes: u.PinnedBytes, VIs: u.VIs, Filters: u.Filters})
	}
	return out
}

// capturer returns the port's Capturer, creating it on first use.
func (in *Inspector) capturer(p *viservice.Port) (*dataplane.Capturer, error) {
	dp, ok := p.Plane.(*dataplane.Port)
	if !ok {
		return nil, &api.Error{Status: http.StatusNotImplemented, Msg: fmt.Sprintf("port %s: capture needs the software data plane", p.Name)}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return nil, &api.Error{Status: http.StatusServiceUnavailable, Msg: "the agent is shutting down"}
	}
	if c := in.capturers[dp]; c != nil {
		return c, nil
	}
	c, err := dataplane.NewCapturer(dp, dataplane.CaptureOptions{Logger: in.log})
	if err != nil {
		return nil, fmt.Errorf("port %s: %w", p.Name, err)
	}
	in.capturers[dp] = c
	return c, nil
}

// Close stops every capture.
func (in *Inspector) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closed = true
	var errs []error
	for _, c := range in.capturers {
		errs = append(errs, c.Close())
	}
	in.capturers = map[*dataplane.Port]*dataplane.Capturer{}
	return errors.Join(errs...)
}

// parseUint parses a query number with a clear error.
func parseUint(name, s string, max uint64) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > max {
		return 0, &api.Error{Status: http.StatusBadRequest, Msg: fmt.Sprintf("%s=%q: want a whole number 0..%d", name, s, max)}
	}
	return n, nil
}
