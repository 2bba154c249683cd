// Package softvi is the node agent's software VI backend: it puts the XDP
// data plane (pkg/dataplane) on every port of a software pool, and serves each
// allocation's broker socket (pkg/broker) with a VI service (pkg/viservice),
// so an unprivileged pod gets its VI as file descriptors.
//
// It is the agent's backend for software pools (it satisfies pkg/agent's
// Backend without importing it; main wires it): OnPoolPorts opens the data
// plane when a software pool's ports are known, PortHealth reports a port
// whose data plane failed (its slots advertise Unhealthy), and Prepare /
// Release serve an allocation's socket and free its VIs. The agent routes
// only software pools here. On agent exit, Close detaches: data-plane links and maps stay pinned
// and the pods' sockets keep their VIs flowing until a restarted agent
// re-adopts them.
//
// A broker socket serves only the pod that holds its allocation: each
// allocation's socket gets its own [KubepodsPeer], which compares the peer's
// pod (from its cgroup) with the allocation's pod (from the kubelet's device
// checkpoint) and refuses anyone else with EPERM, reported through
// OnRefused as an event on the owning pod. --broker-host-uids is the one
// explicit exception.
package softvi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/allocdir"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
	"github.com/kube-efvi/kube-efvi/pkg/kubeletcheckpoint"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// SocketName is the broker socket's name inside an allocation's directory.
const SocketName = "broker.sock"

// Config configures the backend.
type Config struct {
	// BPFRoot is where each port's maps and links are pinned
	// (default /sys/fs/bpf/kube-efvi).
	BPFRoot string
	// StateDir keeps each port's filter table (default /var/lib/efvi/ports).
	StateDir string
	// BrokerRoot holds the per-allocation directories (e.g. /run/efvi/alloc).
	BrokerRoot string
	// Registry indexes ports and allocations for the CNI side (created if nil).
	Registry *viservice.Registry
	// Authorizer checks each broker peer of every allocation (tests). Nil:
	// a KubepodsPeer per allocation that admits only the allocation's pod
	// (from the kubelet's device checkpoint at KubeletCheckpoint), widened
	// by HostUIDs.
	Authorizer broker.Authorizer
	// KubeletCheckpoint is the kubelet's device checkpoint (default
	// kubeletcheckpoint.DefaultPath).
	KubeletCheckpoint string
	// HostUIDs may use allocation sockets from outside a pod (tools run
	// standalone on the node, e.g. efsink -socket ...). Empty: pods only.
	HostUIDs []uint32
	Logger   *slog.Logger
}

// Backend is the software VI backend.
type Backend struct {
	cfg  Config
	log  *slog.Logger
	dirs allocdir.Dirs

	warmCtx    context.Context // background slot warming; cancelled by Close
	stopWarm   context.CancelFunc
	warmActive sync.WaitGroup

	mu      sync.Mutex
	refused func(Refusal)              // see OnRefused
	planes  map[string]*dataplane.Port // by port name
	served  map[string]*served         // by allocation id
	limits  map[string]config.Limits   // by pool name

	// healthMu guards failed apart from mu, which is held while a data
	// plane loads: health questions (asked under the agent's lock) never wait.
	healthMu sync.Mutex
	failed   map[string]error // ports whose data plane failed to open
}

type served struct {
	alloc  *viservice.Allocation
	srv    *broker.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a backend; nothing is opened until ports or allocations come.
func New(cfg Config) *Backend {
	if cfg.BPFRoot == "" {
		cfg.BPFRoot = filepath.Join(dataplane.DefaultBPFFS, "kube-efvi")
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/var/lib/efvi/ports"
	}
	if cfg.Registry == nil {
		cfg.Registry = viservice.NewRegistry()
	}
	if cfg.KubeletCheckpoint == "" {
		cfg.KubeletCheckpoint = kubeletcheckpoint.DefaultPath
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Backend{
		cfg: cfg, log: cfg.Logger.With("component", "softvi"), dirs: allocdir.Dirs{Root: cfg.BrokerRoot},
		warmCtx: ctx, stopWarm: cancel,
		planes: map[string]*dataplane.Port{}, failed: map[string]error{}, served: map[string]*served{},
	}
}

// UseDirs sets the directories from the agent's resolved settings: the
// broker root is <brokerDir>/alloc, port state goes to <stateDir>/ports. Call
// it before the first port or allocation (pkg/agent's NewBroker does).
func (b *Backend) UseDirs(brokerDir, stateDir string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cfg.BrokerRoot = filepath.Join(brokerDir, "alloc")
	b.cfg.StateDir = filepath.Join(stateDir, "ports")
	b.dirs = allocdir.Dirs{Root: b.cfg.BrokerRoot}
}

// Refusal is a broker peer refused on an allocation's socket.
type Refusal struct {
	AllocationID string
	Resource     string
	Devices      []string
	PodUID       string // the allocation's pod, empty when unknown
	Peer         broker.Peer
	Err          error
}

// OnRefused sets the function told of each refused peer (the agent
// records an event on the owning pod).
func (b *Backend) OnRefused(f func(Refusal)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refused = f
}

// authorizer returns the check of an allocation's broker peers.
func (b *Backend) authorizerLocked(req deviceplugin.PrepareRequest) broker.Authorizer {
	if b.cfg.Authorizer != nil {
		return b.cfg.Authorizer
	}
	path, devices := b.cfg.KubeletCheckpoint, slices.Clone(req.Devices)
	return KubepodsPeer{
		ProcRoot: "/proc", HostUIDs: b.cfg.HostUIDs,
		PodUID: func(context.Context) (string, error) { return CheckpointOwner(path, req.Resource, devices) },
		Refused: func(_ context.Context, p broker.Peer, owner string, err error) {
			b.log.Warn("broker peer refused", "allocation", req.AllocationID, "pod", owner, "peer_pid", p.PID, "peer_uid", p.UID, "err", err)
			b.mu.Lock()
			f := b.refused
			b.mu.Unlock()
			if f != nil {
				f(Refusal{AllocationID: req.AllocationID, Resource: req.Resource, Devices: devices, PodUID: owner, Peer: p, Err: err})
			}
		},
	}
}

// Registry returns the backend's registry of ports and allocations.
func (b *Backend) Registry() *viservice.Registry { return b.cfg.Registry }

// OnPoolPorts opens the data plane on a software pool's ports (agent seam).
func (b *Backend) OnPoolPorts(pool config.Pool, ports []discovery.Port) {
	if pool.Backend != config.Software {
		return
	}
	b.mu.Lock()
	if b.limits == nil {
		b.limits = map[string]config.Limits{}
	}
	b.limits[pool.Name] = pool.Limits
	b.mu.Unlock()
	b.sweepOrphanVIs()
	slots := make([]uint32, pool.VIsPerPort)
	for i := range slots {
		slots[i] = uint32(i)
	}
	for _, p := range ports {
		vp, err := b.port(p.Name)
		if err != nil {
			b.log.Error("software data plane unavailable: the port's VI slots are Unhealthy", "pool", pool.Name, "port", p.Name, "err", err)
			continue
		}
		// Create the slots' veths ahead of pods, off the CNI ADD path.
		b.warm(vp, slots)
	}
}

// warm prepares slot VIs in the background.
func (b *Backend) warm(vp *viservice.Port, slots []uint32) {
	if b.warmCtx.Err() != nil {
		return
	}
	b.warmActive.Add(1)
	go func() {
		defer b.warmActive.Done()
		n, err := vp.Warm(b.warmCtx, slots)
		if err != nil && b.warmCtx.Err() == nil {
			b.log.Error("preparing VI slots", "port", vp.Name, "err", err)
		}
		if n > 0 {
			b.log.Debug("VI slots ready ahead of pods", "port", vp.Name, "created", n)
		}
	}()
}

// Healthy reports whether a port's data plane is up (agent seam).
func (b *Backend) Healthy(_ string, p discovery.Port) bool {
	return b.PortHealth(config.Pool{}, p) == nil
}

// PortHealth reports why a port's data plane is down, or nil (agent Backend).
func (b *Backend) PortHealth(_ config.Pool, p discovery.Port) error {
	b.healthMu.Lock()
	defer b.healthMu.Unlock()
	if err := b.failed[p.Name]; err != nil {
		return fmt.Errorf("software data plane failed: %w", err)
	}
	return nil
}

// port returns the port's VI service, opening (or re-adopting) its data
// plane the first time.
func (b *Backend) port(name string) (*viservice.Port, error) {
	if p, ok := b.cfg.Registry.Port(name); ok {
		return p, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.cfg.Registry.Port(name); ok {
		return p, nil
	}
	p, err := b.openLocked(name)
	b.healthMu.Lock()
	if err != nil {
		b.failed[name] = err
	} else {
		delete(b.failed, name)
	}
	b.healthMu.Unlock()
	if err != nil {
		return nil, err
	}
	b.cfg.Registry.AddPort(p)
	return p, nil
}

func (b *Backend) openLocked(name string) (*viservice.Port, error) {
	if err := dataplane.EnsureBPFFS(dataplane.DefaultBPFFS); err != nil {
		return nil, fmt.Errorf("bpffs: %w", err)
	}
	link, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("port %s: %w", name, err)
	}
	plane, err := dataplane.Open(context.Background(), dataplane.PortConfig{
		Ifname:     name,
		PinDir:     filepath.Join(b.cfg.BPFRoot, name),
		VethPrefix: viVethPrefixOf(link.Index),
		Logger:     b.log,
	})
	if err != nil {
		return nil, fmt.Errorf("port %s: data plane: %w", name, err)
	}
	vp, err := viservice.NewPort(name, link.HardwareAddr, link.MTU, plane)
	if err == nil {
		// A retired slot gets a fresh VI in the background (see OnPoolPorts).
		vp.Retired = func(slot uint32) { b.warm(vp, []uint32{slot}) }
		err = vp.Persist(filepath.Join(b.cfg.StateDir, name+".json"))
	}
	if err != nil {
		plane.Close()
		return nil, fmt.Errorf("port %s: %w", name, err)
	}
	b.planes[name] = plane
	return vp, nil
}

// viVethPrefixOf names the VI veths of the port with that ifindex:
// efv<ifindex>v<slot> and its peer efv<ifindex>v<slot>p.
func viVethPrefixOf(ifindex int) string { return "efv" + strconv.Itoa(ifindex) }

// viVethPrefix returns the port prefix of a VI veth's name, or ok=false
// for any other link.
func viVethPrefix(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "efv")
	if !ok {
		return "", false
	}
	idx, slot, ok := strings.Cut(rest, "v")
	slot = strings.TrimSuffix(slot, "p")
	if !ok || !allDigits(idx) || !allDigits(slot) {
		return "", false
	}
	return "efv" + idx, true
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// sweepOrphanVIs removes the VI veths of ports that no longer exist (the
// port's data plane cannot list them once its link is gone).
func (b *Backend) sweepOrphanVIs() {
	ifs, err := net.Interfaces()
	if err != nil {
		b.log.Warn("orphan VI sweep: list interfaces", "err", err)
		return
	}
	keep := map[string]bool{}
	for _, i := range ifs {
		keep[viVethPrefixOf(i.Index)] = true
	}
	removed, err := dataplane.RemoveVIVeths(viVethPrefix, keep)
	if len(removed) > 0 {
		b.log.Info("removed the VI veths of ports that are gone", "veths", removed)
	}
	if err != nil {
		b.log.Warn("orphan VI sweep", "err", err)
	}
}

// Prepare serves a new allocation's broker socket (device plugin seam). It
// is also called for allocations restored from the checkpoint at start-up.
func (b *Backend) Prepare(ctx context.Context, req deviceplugin.PrepareRequest) (deviceplugin.Mount, error) {
	portName, err := allocator.DevicesPort(req.Devices, "the software backend serves one port per container")
	if err != nil {
		return deviceplugin.Mount{}, fmt.Errorf("allocation %s: %w", req.AllocationID, err)
	}
	p, err := b.port(portName)
	if err != nil {
		return deviceplugin.Mount{}, fmt.Errorf("allocation %s: %w", req.AllocationID, err)
	}
	m, err := b.dirs.Prepare(ctx, req)
	if err != nil {
		return m, err
	}
	// The directory is mounted only into the allocation's container; the
	// socket inside it is the capability, and the peer is checked anyway.
	if err := os.Chmod(m.HostPath, 0o711); err != nil {
		return m, fmt.Errorf("allocation %s: %w", req.AllocationID, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.served[req.AllocationID]; ok {
		return m, nil
	}
	alloc, err := viservice.NewAllocation(req.Pool, p, req.Devices, b.log.With("allocation", req.AllocationID))
	if err != nil {
		return m, err
	}
	lim, setting := b.poolLimits(req.Pool)
	alloc.Limits = viservice.Limits{MaxMemory: lim.PinnedBytes(), MaxVIs: lim.VIs, MaxFilters: lim.Filters, Setting: setting}
	if err := b.cfg.Registry.Add(req.AllocationID, alloc); err != nil {
		return m, err
	}
	srv, err := broker.Listen(broker.Config{
		Path: filepath.Join(m.HostPath, SocketName), Mode: 0o666,
		Sessions: alloc, Authorizer: b.authorizerLocked(req), Logger: b.log,
		MaxConns: lim.Connections, MaxConnsSetting: setting + ".connections",
	})
	if err != nil {
		b.cfg.Registry.Remove(req.AllocationID)
		return m, fmt.Errorf("allocation %s: %w", req.AllocationID, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &served{alloc: alloc, srv: srv, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := srv.Serve(sctx); err != nil && !errors.Is(err, context.Canceled) {
			b.log.Error("broker stopped", "allocation", req.AllocationID, "err", err)
		}
	}()
	b.served[req.AllocationID] = s
	b.log.Info("allocation served", "allocation", req.AllocationID, "pool", req.Pool, "devices", req.Devices)
	return m, nil
}

// poolLimits returns a pool's per-allocation limits (defaults for a pool not
// seen yet) and how messages name their config field. Call with b.mu held.
func (b *Backend) poolLimits(pool string) (config.Limits, string) {
	lim, ok := b.limits[pool]
	if !ok {
		c := config.Config{Pools: []config.Pool{{Name: pool}}}
		c.SetDefaults()
		lim = c.Pools[0].Limits
	}
	return lim, fmt.Sprintf("the agent config's pool %q pools[].limits", pool)
}

// Release stops an allocation's socket and frees its VIs (device plugin
// seam): the pod is gone.
func (b *Backend) Release(ctx context.Context, pool, id string) error {
	b.mu.Lock()
	s := b.served[id]
	delete(b.served, id)
	b.mu.Unlock()
	var errs []error
	if s != nil {
		s.cancel()
		errs = append(errs, s.srv.Close())
		<-s.done
		errs = append(errs, s.alloc.Release())
	}
	b.cfg.Registry.Remove(id)
	errs = append(errs, b.dirs.Release(ctx, pool, id))
	return errors.Join(errs...)
}

// Destroy removes everything the backend made on the node: every
// allocation's socket and VIs, every port's data plane (VI veths, XDP/TCX
// programs, pinned maps and links, the pin directories), the ports' state
// files and the broker directories. The release is gone (helm uninstall);
// a restart or an upgrade calls Close instead.
func (b *Backend) Destroy() error {
	b.stopWarm()
	b.warmActive.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for id, s := range b.served {
		s.cancel()
		errs = append(errs, s.srv.Close())
		<-s.done
		errs = append(errs, s.alloc.Release())
		b.cfg.Registry.Remove(id)
	}
	for name, p := range b.planes {
		if err := p.Destroy(); err != nil {
			errs = append(errs, fmt.Errorf("port %s: %w", name, err))
		}
	}
	b.served, b.planes = map[string]*served{}, map[string]*dataplane.Port{}
	// Every VI veth on the node is this agent's: those of ports that went
	// away (no data plane lists them any more) go too.
	if removed, err := dataplane.RemoveVIVeths(viVethPrefix, nil); err != nil {
		errs = append(errs, err)
	} else if len(removed) > 0 {
		b.log.Info("removed VI veths no port's data plane listed", "veths", removed)
	}
	for _, d := range []string{b.cfg.BPFRoot, b.cfg.StateDir, b.cfg.BrokerRoot} {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// Close detaches from everything without freeing: the agent is exiting.
func (b *Backend) Close() error {
	b.stopWarm()
	b.warmActive.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for _, s := range b.served {
		s.alloc.Detach()
		s.cancel()
		errs = append(errs, s.srv.Close())
		<-s.done
	}
	for _, p := range b.planes {
		errs = append(errs, p.Close())
	}
	b.served, b.planes = map[string]*served{}, map[string]*dataplane.Port{}
	return errors.Join(errs...)
}
