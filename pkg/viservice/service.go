// Package viservice is the agent's VI broker: it serves the broker protocol
// (pkg/broker) for one allocation at a time, on top of a port's software data
// plane (pkg/dataplane), and keeps each port's filter table and each
// allocation's filter policy (pkg/filter).
//
// What a pod gets, step by step (ef_vi call → what the agent does):
//   - ef_pd_alloc → a PD id in the session; a PD is bound to the allocation's
//     port.
//   - ef_memreg_alloc → a sealed memfd of the requested size, created by the
//     agent (which has CAP_IPC_LOCK, so the pod's memlock limit never applies)
//     and passed to the pod. The agent keeps its own reference until the region
//     is freed, to register it as the UMEM of the VIs that use it.
//   - ef_vi_alloc_from_pd → the data plane's veth pair for one of the
//     allocation's VI slots, an AF_XDP socket bound to its inner end with the
//     region as UMEM, inserted in the xskmap, and passed to the pod. The agent
//     keeps a reference so it can read the socket's statistics and free it when
//     the client goes; the pod's copy keeps the VI alive across an agent
//     restart.
//   - ef_vi_filter_add/del → parse (efsink grammar; the host defaults to the
//     pod's first IP), policy check (own IPs only; multicast and wide filters by
//     allowance), the port's filter table (EEXIST/EBUSY), then the data plane.
//   - closing the connection frees everything the client held: filters, VIs,
//     memory.
//
// A VI's id on the wire is its slot number on the port (the N of the device id
// "<port>-vi<N>"), so ids are stable and unique per port.
package viservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// DataPlane is what the service needs from a port's data plane; *dataplane.Port
// implements it.
type DataPlane interface {
	CreateVI(ctx context.Context, c dataplane.VIConfig) (*dataplane.VI, error)
	DestroyVI(id uint32) error
	InstallFilter(vi uint32, s filter.Spec) (dataplane.Handle, error)
	RemoveFilter(h dataplane.Handle) error
	VICounters(id uint32) (dataplane.Counters, error)
}

// Port is one port as the service sees it: its data plane and filter table,
// shared by every allocation on the port.
type Port struct {
	Name  string // interface name, e.g. "eth1"
	MAC   [6]byte
	MTU   int
	Plane DataPlane

	mu        sync.Mutex // serialises table+data plane changes on this port
	table     *filter.Table
	statePath string
}

// NewPort wraps a data plane. mac and mtu are the port's, told to clients so
// they can build frames.
func NewPort(name string, mac net.HardwareAddr, mtu int, plane DataPlane) (*Port, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("port %s: MAC %q is not 6 bytes", name, mac)
	}
	p := &Port{Name: name, MTU: mtu, Plane: plane, table: filter.NewTable()}
	copy(p.MAC[:], mac)
	return p, nil
}

// Filters lists the port's filter table.
func (p *Port) Filters() []filter.Entry { return p.table.List() }

// Persist makes the port keep its filter table in path (JSON, replaced
// atomically on every change) and restores the table from it if it exists, so
// a restarted agent knows who owns the filters its data plane still holds.
func (p *Port) Persist(path string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.statePath = path
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return p.persistLocked()
	}
	if err != nil {
		return fmt.Errorf("read filter state: %w", err)
	}
	var entries []filter.Entry
	if err := json.Unmarshal(b, &entries); err != nil {
		return fmt.Errorf("filter state %s is corrupt (%v): move it away to start with an empty table", path, err)
	}
	if err := p.table.Restore(entries); err != nil {
		return fmt.Errorf("restore filter state from %s: %w", path, err)
	}
	return nil
}

func (p *Port) persistLocked() error {
	if p.statePath == "" {
		return nil
	}
	b, err := json.Marshal(p.table.Snapshot())
	if err != nil {
		return err
	}
	return allocator.WriteFileAtomic(p.statePath, b, 0o600)
}

// Limits bound what one client may hold.
type Limits struct {
	MaxMemory uint64 // bytes of packet memory per session (default 1 GiB)
	MaxPDs    int    // default 16
	MaxMemReg int    // default 16
}

func (l Limits) withDefaults() Limits {
	if l.MaxMemory == 0 {
		l.MaxMemory = 1 << 30
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

	slots []uint32

	mu       sync.Mutex
	policy   filter.Policy // OwnIPs come from the CNI
	inUse    map[uint32]bool
	detached bool
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

// NewAllocation checks the device ids against the port and returns the
// allocation with an empty policy (no own IPs yet: IP filters are refused
// until SetAddrs).
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
	return a, nil
}

// SlotOf parses the VI slot number out of a device id "<port>-vi<N>".
func SlotOf(port, device string) (uint32, error) {
	rest, ok := strings.CutPrefix(device, port+"-vi")
	if !ok {
		return 0, fmt.Errorf("device %q is not a VI slot of port %s (want %s-vi<N>)", device, port, port)
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("device %q: slot number %q: %w", device, rest, err)
	}
	return uint32(n), nil
}

// SetPolicy replaces the allocation's filter policy (own IPs and allowances).
// VIs already created get the new addresses as their allowed TX sources.
func (a *Allocation) SetPolicy(p filter.Policy) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.policy = p
}

// Policy returns the current filter policy.
func (a *Allocation) Policy() filter.Policy {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.policy
}

// claimSlot takes a free slot for a new VI.
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

var errNoAddrs = errors.New("this pod's IP addresses are not known yet (the CNI reports them at pod start)")

// defaultHost is the host an SDK filter without one gets: the pod's first IP.
func defaultHost(p filter.Policy) netip.Addr {
	if len(p.OwnIPs) > 0 {
		return p.OwnIPs[0]
	}
	return netip.Addr{}
}
