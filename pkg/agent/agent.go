// Package agent wires the node agent together: config (with reload),
// port discovery, the VI slot allocator, one kubelet device plugin per pool,
// reconciliation with the kubelet PodResources API, and metrics.
//
// Backends are chosen per pool: main builds one [Backend] per pool kind
// (software: the XDP data plane and broker sockets; hardware: the ef_vi
// cluster daemon on the NIC) and passes them in Options.Backends. The agent
// routes each allocation's Prepare/Release to the backend of its pool, tells
// each backend its pools' ports (outside the agent's lock: data-plane loads
// are slow) and asks it whether a port can serve VIs. A hardware pool never
// reaches the software backend. A pool whose kind has no backend (an agent
// built without the hardware backend) advertises Unhealthy slots and says
// why in its log, metrics (efvi_pool_unavailable) and Allocate errors.
//
// Pools: the config's pools, or — when it defines none — one hardware pool
// per Solarflare port, named after the interface (docs/architecture.md, "Names").
// A port belongs to at most one pool (the first that selects it). A hardware
// pool with no Solarflare port, or without /dev/sfc_char, is a reported
// status (log, efvi_pool_ports, Unhealthy or zero devices), never a crash.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
	"github.com/kube-efvi/kube-efvi/pkg/metrics"
)

// PodResourcesLister lists the devices the kubelet has assigned.
type PodResourcesLister interface {
	List(ctx context.Context) ([]allocator.Held, error)
}

// Options configure an Agent. Zero values mean the real node.
type Options struct {
	// ConfigPath is the YAML config; "" runs with defaults (auto pools).
	ConfigPath string
	// Override adjusts the agent settings after every load (command-line
	// flags win over the file).
	Override func(*config.Agent)
	// SysfsRoot is where sysfs is mounted ("/sys").
	SysfsRoot string
	// DevFS is the node's root filesystem, for /dev checks (os.DirFS("/")).
	DevFS fs.FS
	// Events is the link event source (netlink in the agent's namespace).
	Events discovery.Events
	// Resync is the periodic rescan interval (30 s).
	Resync time.Duration
	// PodResources lists kubelet assignments (default: the configured socket).
	PodResources PodResourcesLister
	// Backends serve the pools of each kind; a kind without one advertises
	// its pools' slots Unhealthy (see the package doc).
	Backends map[config.Backend]Backend
	// Collectors are registered on the agent's metrics registry (e.g. the
	// per-VI traffic collector).
	Collectors []prometheus.Collector
	Logger     *slog.Logger
}

// Agent is the node agent.
type Agent struct {
	opts Options
	log  *slog.Logger

	// hookMu orders recomputes with their OnPoolPorts deliveries, which run
	// outside mu so that slow backend work never blocks mu's users (CNI ADD).
	hookMu sync.Mutex

	mu        sync.Mutex
	cfg       *config.Config
	ports     []discovery.Port
	pools     map[string]config.Pool // active pools by name
	status    map[string]string      // last logged status per pool
	alloc     *allocator.Allocator
	mgr       *deviceplugin.Manager
	met       *metrics.Metrics
	cdi       *deviceplugin.CDIWriter
	pr        PodResourcesLister
	reload    chan struct{}
	reconcile chan struct{}

	metricsAddr chan string
}

// New returns an agent; Run starts it.
func New(opts Options) *Agent {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.DevFS == nil {
		opts.DevFS = os.DirFS("/")
	}
	if opts.Events == nil {
		opts.Events = discovery.Netlink{Logger: opts.Logger}
	}
	return &Agent{opts: opts, log: opts.Logger, pools: map[string]config.Pool{}, status: map[string]string{},
		reload: make(chan struct{}, 1), reconcile: make(chan struct{}, 1), metricsAddr: make(chan string, 1)}
}

// Reload re-reads the config file (SIGHUP).
func (a *Agent) Reload() {
	select {
	case a.reload <- struct{}{}:
	default:
	}
}

// MetricsAddr returns the metrics listen address once listening ("" when
// disabled). It blocks until Run has started the server.
func (a *Agent) MetricsAddr(ctx context.Context) string {
	select {
	case s := <-a.metricsAddr:
		a.metricsAddr <- s
		return s
	case <-ctx.Done():
		return ""
	}
}

func (a *Agent) loadConfig() (*config.Config, []byte, error) {
	c, raw, err := LoadConfig(a.opts.ConfigPath, a.opts.Override)
	if err == nil && c.ImplicitVersion() {
		a.log.Info("config file has no version field: read as "+config.Version+"; add `version: "+config.Version+"` to it", "config", a.opts.ConfigPath)
	}
	return c, raw, err
}

// LoadConfig reads and validates the config file ("" = defaults) and applies
// the command-line override, as Run does: main uses it to resolve the
// settings (paths) it builds the backends with.
func LoadConfig(path string, override func(*config.Agent)) (*config.Config, []byte, error) {
	var raw []byte
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, fmt.Errorf("read config: %w", err)
		}
		raw = b
	}
	c, err := config.Parse(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("config %s: %w", path, err)
	}
	if override != nil {
		override(&c.Agent)
		if err := c.Validate(); err != nil {
			return nil, nil, fmt.Errorf("config after command-line overrides: %w", err)
		}
	}
	return c, raw, nil
}

// Run runs the agent until ctx is done, then shuts down gracefully: plugin
// sockets removed, metrics server closed, checkpoint already on disk. It
// returns an error only when startup fails.
func (a *Agent) Run(ctx context.Context) error {
	cfg, raw, err := a.loadConfig()
	if err != nil {
		return err
	}
	a.cfg = cfg
	ag := cfg.Agent
	a.log.Info("starting", "config", a.opts.ConfigPath, "pools", len(cfg.Pools), "pluginDir", ag.PluginDir,
		"stateDir", ag.StateDir, "brokerDir", ag.BrokerDir, "cdi", ag.CDI.Enabled)

	if err := a.openAllocator(ag); err != nil {
		return err
	}
	defer a.alloc.Close() // early returns: stop the checkpoint writer
	a.met = metrics.New(a.alloc.Stats)
	for _, c := range a.opts.Collectors {
		if err := a.met.Registry.Register(c); err != nil {
			return fmt.Errorf("register metrics collector: %w", err)
		}
	}
	if ag.CDI.Enabled {
		if a.cdi, err = deviceplugin.NewCDIWriter(ag.CDI.Dir); err != nil {
			return err
		}
	}
	a.pr = a.opts.PodResources
	if a.pr == nil {
		c, err := allocator.DialPodResources(ag.PodResourcesSocket)
		if err != nil {
			return err
		}
		defer c.Close()
		a.pr = c
	}
	a.restoreBrokers(ctx)
	a.mgr = deviceplugin.NewManager(ag.PluginDir, a.met, a.log)

	var httpSrv *http.Server
	if ag.MetricsAddress != config.MetricsDisabled {
		lis, err := net.Listen("tcp", ag.MetricsAddress)
		if err != nil {
			return fmt.Errorf("metrics listen on %s: %w (set agent.metricsAddress, or %q to disable)", ag.MetricsAddress, err, config.MetricsDisabled)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", a.met.Handler())
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := httpSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("metrics server", "err", err)
			}
		}()
		a.metricsAddr <- lis.Addr().String()
	} else {
		a.metricsAddr <- ""
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	goRun := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				a.log.Error(name+" stopped", "err", err)
			}
		}()
	}
	goRun("device plugin manager", a.mgr.Run)
	watch := &discovery.Watch{Scanner: discovery.Scanner{Root: a.opts.SysfsRoot}, Events: a.opts.Events,
		Resync: a.opts.Resync, Logger: a.log, OnChange: a.setPorts}
	goRun("port discovery", watch.Run)
	if a.opts.ConfigPath != "" {
		w := config.NewWatcher(a.opts.ConfigPath, a.applyConfigFromWatch, func(err error) { a.met.ConfigReload(err) }, a.log)
		goRun("config watch", func(ctx context.Context) error {
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-a.reload:
						w.Trigger()
					}
				}
			}()
			return w.Run(ctx, raw)
		})
	}
	goRun("reconcile", a.reconcileLoop)

	<-ctx.Done()
	a.log.Info("shutting down")
	wg.Wait()
	if httpSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = httpSrv.Shutdown(sctx)
		scancel()
	}
	if err := a.alloc.Close(); err != nil {
		a.log.Error("final allocation checkpoint", "err", err)
	}
	a.log.Info("stopped")
	return nil
}

func (a *Agent) openAllocator(ag config.Agent) error {
	path := filepath.Join(ag.StateDir, "allocations.json")
	opts := allocator.Options{CheckpointPath: path, Grace: ag.AllocationGrace.Duration, Logger: a.log}
	al, err := allocator.New(opts)
	if err != nil {
		// A corrupt checkpoint must not crash-loop the agent: keep it for
		// inspection and start empty; Reconcile re-adopts what the kubelet
		// reports, so nothing is issued twice.
		aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			return fmt.Errorf("%w (and moving it aside failed: %v)", err, rerr)
		}
		a.log.Error("allocation checkpoint unusable; moved aside, starting empty and re-learning from the kubelet", "err", err, "movedTo", aside)
		if al, err = allocator.New(opts); err != nil {
			return err
		}
	}
	a.alloc = al
	return nil
}

// restoreBrokers re-creates broker endpoints of restored allocations (after
// a reboot /run is empty, but the kubelet re-uses its cached Allocate answer).
func (a *Agent) restoreBrokers(ctx context.Context) {
	for _, al := range a.alloc.Allocations() {
		a.mu.Lock()
		kind, known := a.kindOfLocked(al.Pool)
		a.mu.Unlock()
		if !known {
			a.log.Warn("restored allocation of a pool no longer configured: kept until its pod ends, not served", "allocation", al.ID, "pool", al.Pool)
			continue
		}
		if _, err := a.backend(kind).Prepare(ctx, deviceplugin.PrepareRequest{Pool: al.Pool, Resource: al.Resource, AllocationID: al.ID, Devices: al.Devices}); err != nil {
			a.log.Error("restore broker endpoint", "allocation", al.ID, "err", err)
		}
	}
}

func (a *Agent) applyConfigFromWatch(c *config.Config) {
	if a.opts.Override != nil {
		a.opts.Override(&c.Agent)
	}
	a.met.ConfigReload(nil)
	a.recompute(func() {
		if !reflect.DeepEqual(c.Agent, a.cfg.Agent) {
			a.log.Warn("agent settings changed in the config; they apply after an agent restart (pools apply now)")
			c.Agent = a.cfg.Agent
		}
		a.cfg = c
	})
}

func (a *Agent) setPorts(ports []discovery.Port) {
	a.recompute(func() { a.ports = ports })
}

// recompute applies change (under mu), recomputes the pools, and then —
// outside mu, in order — tells each backend its pools' ports.
func (a *Agent) recompute(change func()) {
	a.hookMu.Lock()
	defer a.hookMu.Unlock()
	a.mu.Lock()
	if change != nil {
		change()
	}
	hooks := a.recomputeLocked()
	a.mu.Unlock()
	for _, h := range hooks {
		h()
	}
}

// backend returns the backend serving pools of kind.
func (a *Agent) backend(kind config.Backend) Backend {
	if b, ok := a.opts.Backends[kind]; ok && b != nil {
		return b
	}
	return unavailable{kind: kind}
}

// kindOfLocked returns the backend kind of a pool by name: an active pool,
// a configured one, or (without configured pools) an automatic hardware pool.
func (a *Agent) kindOfLocked(pool string) (config.Backend, bool) {
	if p, ok := a.pools[pool]; ok {
		return p.Backend, true
	}
	if a.cfg == nil {
		return "", false
	}
	for _, p := range a.cfg.Pools {
		if p.Name == pool {
			return p.Backend, true
		}
	}
	if len(a.cfg.Pools) == 0 {
		return config.Hardware, true
	}
	return "", false
}

var labelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// effectivePools returns the configured pools or, without any, one
// hardware pool per Solarflare port.
func (a *Agent) effectivePoolsLocked() []config.Pool {
	if len(a.cfg.Pools) > 0 {
		return a.cfg.Pools
	}
	var out []config.Pool
	for _, p := range a.ports {
		if !p.Solarflare() {
			continue
		}
		if !labelRE.MatchString(p.Name) {
			a.log.Warn("Solarflare port name is not a valid pool name; define a pool for it in the config", "port", p.Name)
			continue
		}
		out = append(out, config.Pool{Name: p.Name, ResourcePrefix: config.DefaultResourcePrefix, Backend: config.Hardware,
			Selector: config.Selector{Interfaces: []string{p.Name}}, VIsPerPort: config.DefaultHardwareVIsPerPort, Policy: config.Spread})
	}
	return out
}

// Pool returns the active pool with that name (config reloads included).
func (a *Agent) Pool(name string) (config.Pool, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pools[name]
	return p, ok
}

// Matches reports whether port p is selected by pool.
func Matches(pool config.Pool, p discovery.Port) bool {
	if pool.Backend == config.Hardware && !p.Solarflare() {
		return false
	}
	s := pool.Selector
	in := func(list []string, v string, fold bool) bool {
		if len(list) == 0 {
			return true
		}
		for _, x := range list {
			if x == v || (fold && strings.EqualFold(x, v)) {
				return true
			}
		}
		return false
	}
	return in(s.Interfaces, p.Name, false) && in(s.Drivers, p.Driver, false) &&
		in(s.PCIAddresses, p.PCIAddress, false) && in(s.MACs, p.MAC, true)
}

func (a *Agent) recomputeLocked() (hooks []func()) {
	want := a.effectivePoolsLocked()
	wantByName := map[string]config.Pool{}
	for _, p := range want {
		wantByName[p.Name] = p
	}
	// Pools gone: stop advertising; allocations stay until reconciled.
	for name := range a.pools {
		if _, ok := wantByName[name]; !ok {
			a.log.Info("pool removed; its allocations stay until their pods end", "pool", name)
			a.mgr.Remove(name)
			a.alloc.RemovePool(name)
			a.met.DeletePool(name)
			delete(a.pools, name)
			delete(a.status, name)
		}
	}
	claimed := map[string]string{}
	for _, pool := range want {
		be := a.backend(pool.Backend)
		var unhealthy error // why the backend cannot serve (first port's reason)
		var ports []discovery.Port
		var aps []allocator.Port
		for _, p := range a.ports {
			if !Matches(pool, p) {
				continue
			}
			if other, ok := claimed[p.Name]; ok {
				a.log.Warn("port selected by two pools; the first keeps it", "port", p.Name, "pool", pool.Name, "keptBy", other)
				continue
			}
			claimed[p.Name] = pool.Name
			ports = append(ports, p)
			healthy := p.LinkUp()
			if err := be.PortHealth(pool, p); err != nil {
				healthy = false
				if unhealthy == nil {
					unhealthy = fmt.Errorf("port %s: %w", p.Name, err)
				}
			}
			aps = append(aps, allocator.Port{Name: p.Name, NUMANode: p.NUMANode, Capacity: pool.VIsPerPort, Healthy: healthy})
		}
		policy := allocator.Spread
		if pool.Policy == config.Pack {
			policy = allocator.Pack
		}
		a.alloc.SetPool(allocator.PoolSpec{Name: pool.Name, Resource: pool.ResourceName(), Policy: policy, Ports: aps})
		a.met.SetPoolPorts(pool.Name, len(ports))
		a.met.SetPoolUnavailable(pool.Name, unhealthy)
		a.logStatusLocked(pool, ports, unhealthy)

		old, existed := a.pools[pool.Name]
		if !existed || old.ResourceName() != pool.ResourceName() || old.Backend != pool.Backend {
			a.mgr.Add(deviceplugin.NewPlugin(pool.Name, pool.ResourceName(), a.mgr.Dir(), a.backendFor(pool), a.met, a.log))
		} else if p := a.mgr.Plugin(pool.Name); p != nil {
			p.Notify()
		}
		a.pools[pool.Name] = pool
		hooks = append(hooks, func() { be.OnPoolPorts(pool, ports) })
	}
	return hooks
}

func (a *Agent) logStatusLocked(pool config.Pool, ports []discovery.Port, unhealthy error) {
	var st string
	switch {
	case len(ports) == 0 && pool.Backend == config.Hardware:
		st = "no Solarflare interfaces match this pool (drivers sfc, sfc_efct, xilinx_efct): it advertises 0 devices; check the NIC, its driver and the pool's selector"
	case len(ports) == 0:
		st = "no interface matches this pool's selector: it advertises 0 devices"
	case unhealthy != nil:
		st = fmt.Sprintf("%s pool cannot serve VIs: devices advertised Unhealthy: %v", pool.Backend, unhealthy)
	default:
		names := make([]string, len(ports))
		down := 0
		for i, p := range ports {
			names[i] = p.Name
			if !p.LinkUp() {
				down++
			}
		}
		sort.Strings(names)
		st = fmt.Sprintf("ports %s, %d with link down", strings.Join(names, ","), down)
	}
	if a.status[pool.Name] == st {
		return
	}
	a.status[pool.Name] = st
	if len(ports) == 0 || unhealthy != nil {
		a.log.Warn("pool status", "pool", pool.Name, "status", st)
	} else {
		a.log.Info("pool status", "pool", pool.Name, "status", st)
	}
}

func (a *Agent) backendFor(pool config.Pool) *deviceplugin.PoolBackend {
	return &deviceplugin.PoolBackend{Pool: pool.Name, Resource: pool.ResourceName(), Hardware: pool.Backend == config.Hardware,
		Alloc: a.alloc, Broker: a.backend(pool.Backend), DevFS: a.opts.DevFS, CDI: a.cdi, Reclaim: a.reclaim, Logger: a.log.With("pool", pool.Name)}
}

// reclaim is called by Allocate when the kubelet hands out a slot we think
// is held: ask the kubelet who holds what, freeing stale allocations.
func (a *Agent) reclaim(ctx context.Context, devices []string) error {
	return a.reconcileOnce(ctx, devices)
}

func (a *Agent) reconcileOnce(ctx context.Context, reclaim []string) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	held, err := a.pr.List(lctx)
	cancel()
	if err != nil {
		return err
	}
	freed, err := a.alloc.Reconcile(held, reclaim)
	for _, al := range freed {
		a.mu.Lock()
		kind, known := a.kindOfLocked(al.Pool)
		a.mu.Unlock()
		var bes []Backend
		if known {
			bes = []Backend{a.backend(kind)}
		} else { // pool gone from the config: Release is idempotent, ask all
			for _, b := range a.opts.Backends {
				bes = append(bes, b)
			}
		}
		for _, b := range bes {
			if berr := b.Release(context.WithoutCancel(ctx), al.Pool, al.ID); berr != nil {
				a.log.Error("release allocation in its backend", "allocation", al.ID, "pool", al.Pool, "err", berr)
			}
		}
		if a.cdi != nil {
			if cerr := a.cdi.Remove(al.Resource, al.ID); cerr != nil {
				a.log.Error("remove CDI spec", "allocation", al.ID, "err", cerr)
			}
		}
	}
	return err
}

// reconcileLoop reconciles every interval and re-checks backend readiness
// (e.g. /dev/sfc_char appearing after a module load).
func (a *Agent) reconcileLoop(ctx context.Context) error {
	a.mu.Lock()
	every := a.cfg.Agent.ReconcileInterval.Duration
	a.mu.Unlock()
	t := time.NewTicker(every)
	defer t.Stop()
	hw := deviceplugin.HardwareReady(a.opts.DevFS)
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-a.reconcile:
		}
		if err := a.reconcileOnce(ctx, nil); err != nil {
			if !failing {
				a.log.Warn("reconcile with the kubelet PodResources API failed; allocations are kept until it answers", "err", err)
			}
			failing = true
		} else {
			if failing {
				a.log.Info("reconcile with the kubelet PodResources API works again")
			}
			failing = false
		}
		if now := deviceplugin.HardwareReady(a.opts.DevFS); now != hw {
			hw = now
			a.recompute(nil)
		}
	}
}

// ReconcileNow asks for a reconcile pass (tests, diagnostics).
func (a *Agent) ReconcileNow() {
	select {
	case a.reconcile <- struct{}{}:
	default:
	}
}
