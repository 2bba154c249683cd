package viservice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// Limits bound what one allocation may hold, over all its sessions (see
// account.go), and what one session may hold (MaxPDs, MaxMemReg).
type Limits struct {
	MaxMemory  uint64 // bytes of pinned packet memory per allocation (default 1 GiB)
	MaxVIs     int    // live VI sockets per allocation (default 16)
	MaxFilters int    // filters added by sessions, per allocation (default 512)
	MaxPDs     int    // per session, default 16
	MaxMemReg  int    // per session, default 16
	// Setting is the config path of these limits (e.g. "pools[0].limits"),
	// named in the error a pod gets over a limit.
	Setting string
}

func (l Limits) withDefaults() Limits {
	if l.MaxMemory == 0 {
		l.MaxMemory = 1 << 30
	}
	if l.MaxVIs == 0 {
		l.MaxVIs = 16
	}
	if l.MaxFilters == 0 {
		l.MaxFilters = 512
	}
	if l.MaxPDs == 0 {
		l.MaxPDs = 16
	}
	if l.MaxMemReg == 0 {
		l.MaxMemReg = 16
	}
	return l
}

// Allocation is what the kubelet gave one container: VI slots on one port.
// It is a broker.SessionFactory: each connection to the allocation's socket
// gets a session limited to these slots.
type Allocation struct {
	Pool    string
	Port    *Port
	Devices []string // device ids, "<port>-vi<N>"
	Limits  Limits
	Logger  *slog.Logger
	// Prober tells when the kernel has freed a VI socket (nil: xsk.Prober).
	Prober SocketProber

	slots []uint32 // sorted

	mu       sync.Mutex
	policy   filter.Policy   // OwnIPs come from the CNI
	inUse    map[uint32]bool // slots with a session's socket attached
	socks    sockRefs        // the sessions' live XSKs by slot, for diagnostics (inspect.go)
	detached bool

	acct          account
	limitReporter func(msg string)
}

// NewAllocation checks the device ids against the port and returns the
// allocation with an empty policy (no own IPs yet: IP filters are refused
// until SetPolicy).
func NewAllocation(pool string, port *Port, devices []string, logger *slog.Logger) (*Allocation, error) {
	if logger == nil {
		logger = slog.Default()
	}
	a := &Allocation{Pool: pool, Port: port, Devices: slices.Clone(devices), Logger: logger, inUse: map[uint32]bool{}}
	for _, d := range devices {
		n, err := SlotOf(port.Name, d)
		if err != nil {
			return nil, err
		}
		a.slots = append(a.slots, n)
	}
	if len(a.slots) == 0 {
		return nil, fmt.Errorf("allocation on pool %s: no devices", pool)
	}
	slices.Sort(a.slots)
	return a, nil
}

// SlotOf parses the VI slot number out of a device id "<port>-vi<N>" and
// checks it is on port.
func SlotOf(port, device string) (uint32, error) {
	p, n, ok := allocator.ParseDeviceID(device)
	if !ok || p != port {
		return 0, fmt.Errorf("device %q is not a VI slot of port %s (want %s-vi<N>)", device, port, port)
	}
	return uint32(n), nil
}

// Slots returns the allocation's VI slot numbers, sorted.
func (a *Allocation) Slots() []uint32 { return slices.Clone(a.slots) }

// SetPolicy replaces the allocation's filter policy (own IPs and
// allowances). VIs that exist get the own IPs as their allowed TX sources.
func (a *Allocation) SetPolicy(p filter.Policy) error {
	a.mu.Lock()
	a.policy = p
	a.mu.Unlock()
	for _, s := range a.slots {
		if v, ok := a.Port.Plane.VI(s); ok {
			if err := v.SetSources(a.Port.MAC, p.OwnIPs); err != nil {
				return fmt.Errorf("allocation %v: TX sources: %w", a.Devices, err)
			}
		}
	}
	return nil
}

// Policy returns the current filter policy.
func (a *Allocation) Policy() filter.Policy {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.policy
}

// Detach makes sessions that end from now on leave their VIs and filters in
// place: the agent is exiting, and the pods' own fds keep their VIs flowing
// until a restarted agent takes over. Only the agent's references are closed.
func (a *Allocation) Detach() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.detached = true
}

func (a *Allocation) isDetached() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.detached
}

// claimSlot takes a slot with no session socket for a new VI.
func (a *Allocation) claimSlot() (uint32, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.slots {
		if !a.inUse[s] {
			a.inUse[s] = true
			return s, true
		}
	}
	return 0, false
}

func (a *Allocation) releaseSlot(s uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.inUse, s)
}

func (a *Allocation) slotInUse(s uint32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse[s]
}

// ensureVI returns the data-plane VI of a slot, creating its veths if needed.
func (a *Allocation) ensureVI(ctx context.Context, slot uint32) (*dataplane.VI, error) {
	port := a.Port
	port.mu.Lock()
	defer port.mu.Unlock()
	if v, ok := port.Plane.VI(slot); ok {
		// A kept (warm) VI carries no sources: allow this pod's.
		if err := v.SetSources(port.MAC, a.Policy().OwnIPs); err != nil {
			return nil, fmt.Errorf("VI slot %d on %s: TX sources: %w", slot, port.Name, err)
		}
		return v, nil
	}
	v, err := port.Plane.CreateVI(ctx, dataplane.VIConfig{ID: slot, SrcMAC: port.MAC, SrcIPs: a.Policy().OwnIPs})
	if err != nil {
		return nil, fmt.Errorf("create VI slot %d on %s: %w", slot, port.Name, err)
	}
	return v, nil
}

// destroyIfIdle removes a slot's data-plane VI once nothing uses it: no
// session socket and no attachment filters.
func (a *Allocation) destroyIfIdle(slot uint32) error {
	if a.slotInUse(slot) || a.Port.slotAttached(slot) {
		return nil
	}
	if _, ok := a.Port.Plane.VI(slot); !ok {
		return nil
	}
	if err := a.Port.removeOwner(filter.VIID(slot)); err != nil {
		return err
	}
	return a.Port.retire(slot)
}

// retire destroys a slot's data-plane VI (which revokes any socket still
// bound to it) and tells Retired, so a fresh one can be prepared.
func (p *Port) retire(slot uint32) error {
	p.mu.Lock()
	_, ok := p.Plane.VI(slot)
	var err error
	if ok {
		err = p.Plane.DestroyVI(slot)
	}
	p.mu.Unlock()
	if !ok {
		return nil
	}
	if err != nil {
		return fmt.Errorf("destroy VI slot %d: %w", slot, err)
	}
	if p.Retired != nil {
		p.Retired(slot)
	}
	return nil
}

// Attach installs the filters a pod declared (CNI ADD) on the allocation's
// first VI slot, creating the slot's data-plane VI if the pod has not yet.
// Declarations map onto a pod with several VIs this way: the CNI's filters go
// to the lowest-numbered slot; the pod's SDK adds filters to its other VIs at
// run time, under the same policy.
func (a *Allocation) Attach(ctx context.Context, key string, specs []filter.Spec) ([]filter.Cookie, error) {
	slot := a.slots[0]
	if _, err := a.ensureVI(ctx, slot); err != nil {
		return nil, err
	}
	cookies, err := a.Port.Attach(key, slot, specs, a.Policy())
	if err != nil {
		if derr := a.destroyIfIdle(slot); derr != nil {
			a.Logger.Error("clean up VI after failed attach", "slot", slot, "err", derr)
		}
		return nil, err
	}
	return cookies, nil
}

// DetachFilters removes an attachment's filters (CNI DEL) and the slot's VI
// if nothing else uses it. Idempotent.
func (a *Allocation) DetachFilters(key string) error {
	if err := a.Port.Detach(key); err != nil {
		return err
	}
	return a.destroyIfIdle(a.slots[0])
}

// Release destroys every data-plane VI of the allocation and its filters: the
// pod is gone.
func (a *Allocation) Release() error {
	var errs []error
	for _, s := range a.slots {
		if err := a.Port.removeOwner(filter.VIID(s)); err != nil {
			errs = append(errs, err)
		}
		if err := a.Port.retire(s); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release allocation %v: %w", a.Devices, err)
	}
	return nil
}

// NewSession implements broker.SessionFactory.
func (a *Allocation) NewSession(_ context.Context, p broker.Peer) (broker.Session, error) {
	return &session{
		alloc:  a,
		peer:   p,
		limits: a.Limits.withDefaults(),
		log:    a.Logger.With("pool", a.Pool, "port", a.Port.Name, "peer", p.String()),
		pds:    map[broker.PDID]bool{},
		mems:   map[broker.MemRegID]*memRegion{},
		vis:    map[broker.VIID]*vi{},
	}, nil
}

// defaultHost is the host an SDK filter without one gets: the pod's first IP.
func defaultHost(p filter.Policy) (h netip.Addr) {
	if len(p.OwnIPs) > 0 {
		return p.OwnIPs[0]
	}
	return h
}

var errNoAddrs = errors.New("this pod's IP addresses are not known yet (the CNI reports them at pod start)")
