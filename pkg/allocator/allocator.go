// Package allocator keeps the books of VI slots: which slots each pool
// offers, which allocation holds which slot, and which slots to suggest when
// the kubelet asks for a preferred allocation.
//
// A slot is one VI on one port; its device ID is "<ifname>-vi<N>" (see
// [DeviceID]). The kubelet chooses the device IDs it allocates (it may or may
// not follow our preference) and tells the device plugin in Allocate; the
// allocator records them as an [Allocation]. Because the kubelet never says
// when a pod ends, allocations are reconciled against the kubelet
// PodResources API ([Allocator.Reconcile]): allocations of pods that are gone
// are freed, devices the kubelet reports that we do not know are adopted, so
// a slot is never issued twice — Allocate refuses a slot that a live
// allocation holds.
//
// Every change is written to a checkpoint file atomically (temp file,
// rename) by a background writer that coalesces bursts; [New] restores it,
// [Allocator.Flush] waits for it. Decision (changed from "fsync before
// answering"): the kubelet waits on Allocate, and the synchronous write with
// two fsyncs made Allocate's p99 3–7 ms on a virtual disk. What a crash or a
// power loss can lose is recovered on restart: Reconcile adopts every device
// the kubelet's PodResources still reports, so no slot is issued twice.
//
// Capacity changes (config reload, port changes) never drop allocations: a
// slot held beyond a pool's new capacity stays allocated until its pod goes
// away, but is no longer offered.
package allocator

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Policy orders free slots after NUMA affinity.
type Policy int

// Policies.
const (
	// Spread prefers the port with the most free slots.
	Spread Policy = iota
	// Pack prefers the port with the fewest free slots.
	Pack
)

func (p Policy) String() string {
	if p == Pack {
		return "pack"
	}
	return "spread"
}

// NUMAUnknown marks a port whose NUMA node is not known.
const NUMAUnknown = -1

// Port is one port of a pool as the allocator sees it.
type Port struct {
	Name     string
	NUMANode int
	Capacity int
	Healthy  bool
}

// PoolSpec describes a pool.
type PoolSpec struct {
	Name     string
	Resource string // extended resource name, e.g. efvi.io/fast
	Policy   Policy
	Ports    []Port
}

// Device is one offered slot.
type Device struct {
	ID       string
	Port     string
	Index    int
	NUMANode int
	Healthy  bool
}

// Owner is the container holding an allocation, when known.
type Owner struct {
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
}

func (o Owner) String() string {
	if o.Pod == "" {
		return "unknown pod (not yet reported by the kubelet)"
	}
	return o.Namespace + "/" + o.Pod + "/" + o.Container
}

// Allocation is one container's set of slots from one pool.
type Allocation struct {
	ID       string    `json:"id"`
	Pool     string    `json:"pool"`
	Resource string    `json:"resource"`
	Devices  []string  `json:"devices"`
	Owner    Owner     `json:"owner"`
	Created  time.Time `json:"created"`
	// Seen is true once the kubelet has reported the allocation's pod.
	Seen bool `json:"seen,omitempty"`
	// Adopted is true when the allocation was learned from the kubelet
	// rather than from Allocate (e.g. after a lost checkpoint).
	Adopted bool `json:"adopted,omitempty"`
}

// InUseError is returned by Allocate for a slot that a live allocation holds.
type InUseError struct {
	Pool, Device string
	Holder       Allocation
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("pool %s: device %s is held by allocation %s of %s; it is freed when the kubelet no longer reports that pod",
		e.Pool, e.Device, e.Holder.ID, e.Holder.Owner)
}

// DeviceID names slot index of port: "<port>-vi<index>".
func DeviceID(port string, index int) string { return port + "-vi" + strconv.Itoa(index) }

// DevicesPort returns the one port that every device of an allocation is
// on; why says why a backend needs one port (it ends the error for devices
// that span ports).
func DevicesPort(devices []string, why string) (string, error) {
	port := ""
	for _, d := range devices {
		p, _, ok := ParseDeviceID(d)
		if !ok {
			return "", fmt.Errorf("device %q is not a VI slot id (<port>-vi<N>)", d)
		}
		if port != "" && p != port {
			return "", fmt.Errorf("devices %v span ports %s and %s: %s; request VIs from one port per container", devices, port, p, why)
		}
		port = p
	}
	if port == "" {
		return "", errors.New("no devices")
	}
	return port, nil
}

// ParseDeviceID splits a device ID made by DeviceID.
func ParseDeviceID(id string) (port string, index int, ok bool) {
	i := strings.LastIndex(id, "-vi")
	if i <= 0 {
		return "", 0, false
	}
	n := id[i+3:]
	if n == "" || len(n) > 6 || (len(n) > 1 && n[0] == '0') {
		return "", 0, false
	}
	v := 0
	for _, c := range n {
		if c < '0' || c > '9' {
			return "", 0, false
		}
		v = v*10 + int(c-'0')
	}
	return id[:i], v, true
}

// Options configure New.
type Options struct {
	// CheckpointPath is the checkpoint file; empty keeps state in memory only.
	CheckpointPath string
	// Grace is how long an allocation the kubelet has never reported is kept
	// (the pod may still be being admitted). Default 60 s.
	Grace time.Duration
	// Now is the clock (tests); default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Allocator is safe for concurrent use.
type Allocator struct {
	mu     sync.Mutex
	opts   Options
	log    *slog.Logger
	pools  map[string]*pool
	allocs map[string]*Allocation
	// held maps pool -> device ID -> allocation ID.
	held map[string]map[string]string
	// enc caches each allocation's checkpoint encoding (dropped on change).
	enc map[string][]byte
	// ckpt writes the checkpoint in the background (nil: memory only).
	ckpt *checkpointer
}

type pool struct {
	spec  PoolSpec
	ports map[string]Port
}

// New returns an allocator with the state of the checkpoint file, if any.
// A missing file is an empty state; an unreadable or corrupt one is an error
// (the caller may move it aside and start empty: Reconcile adopts what the
// kubelet still reports).
func New(opts Options) (*Allocator, error) {
	if opts.Grace <= 0 {
		opts.Grace = 60 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Allocator{opts: opts, log: log, pools: map[string]*pool{},
		allocs: map[string]*Allocation{}, held: map[string]map[string]string{}, enc: map[string][]byte{}}
	if opts.CheckpointPath == "" {
		return a, nil
	}
	a.ckpt = newCheckpointer(opts.CheckpointPath, log)
	allocs, err := readCheckpoint(opts.CheckpointPath)
	if err != nil {
		return nil, err
	}
	for _, al := range allocs {
		al := al
		a.insert(&al)
	}
	if len(allocs) > 0 {
		log.Info("allocations restored from checkpoint", "path", opts.CheckpointPath, "allocations", len(allocs))
	}
	return a, nil
}

func (a *Allocator) insert(al *Allocation) {
	a.allocs[al.ID] = al
	m := a.held[al.Pool]
	if m == nil {
		m = map[string]string{}
		a.held[al.Pool] = m
	}
	for _, d := range al.Devices {
		m[d] = al.ID
	}
}

func (a *Allocator) remove(al *Allocation) {
	delete(a.allocs, al.ID)
	delete(a.enc, al.ID)
	m := a.held[al.Pool]
	for _, d := range al.Devices {
		if m[d] == al.ID {
			delete(m, d)
		}
	}
}

// SetPool creates or updates a pool. Allocations are kept whatever the new
// ports and capacities are.
func (a *Allocator) SetPool(spec PoolSpec) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := &pool{spec: spec, ports: make(map[string]Port, len(spec.Ports))}
	for _, pt := range spec.Ports {
		p.ports[pt.Name] = pt
	}
	a.pools[spec.Name] = p
}

// RemovePool stops offering a pool's slots. Its allocations stay until the
// kubelet no longer reports their pods.
func (a *Allocator) RemovePool(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pools, name)
}

// Devices returns the slots the pool offers, sorted by port then index.
func (a *Allocator) Devices(poolName string) []Device {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pools[poolName]
	if p == nil {
		return nil
	}
	names := make([]string, 0, len(p.ports))
	for n := range p.ports {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []Device
	for _, n := range names {
		pt := p.ports[n]
		for i := 0; i < pt.Capacity; i++ {
			out = append(out, Device{ID: DeviceID(n, i), Port: n, Index: i, NUMANode: pt.NUMANode, Healthy: pt.Healthy})
		}
	}
	return out
}

// offered returns the port of an offered device.
func (p *pool) offered(id string) (Port, bool) {
	name, idx, ok := ParseDeviceID(id)
	if !ok {
		return Port{}, false
	}
	pt, ok := p.ports[name]
	if !ok || idx >= pt.Capacity {
		return Port{}, false
	}
	return pt, true
}

// Allocate records that the kubelet gave devices to one container. It fails,
// changing nothing, when a device is not offered by the pool or is held by
// another allocation.
func (a *Allocator) Allocate(poolName string, devices []string) (Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pools[poolName]
	if p == nil {
		return Allocation{}, fmt.Errorf("pool %s does not exist (removed by a config reload?)", poolName)
	}
	if len(devices) == 0 {
		return Allocation{}, fmt.Errorf("pool %s: allocate of zero devices", poolName)
	}
	seen := make(map[string]bool, len(devices))
	for _, d := range devices {
		if seen[d] {
			return Allocation{}, fmt.Errorf("pool %s: device %s requested twice", poolName, d)
		}
		seen[d] = true
		if _, ok := p.offered(d); !ok {
			return Allocation{}, fmt.Errorf("pool %s: device %s is not offered (unknown port or slot beyond capacity)", poolName, d)
		}
		if id, ok := a.held[poolName][d]; ok {
			return Allocation{}, &InUseError{Pool: poolName, Device: d, Holder: *a.allocs[id]}
		}
	}
	al := &Allocation{ID: newID(), Pool: poolName, Resource: p.spec.Resource,
		Devices: append([]string(nil), devices...), Created: a.opts.Now().UTC()}
	a.insert(al)
	if err := a.saveLocked(); err != nil {
		a.remove(al)
		return Allocation{}, err
	}
	return *al, nil
}

// Release frees an allocation (e.g. when the rest of Allocate failed).
func (a *Allocator) Release(id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.allocs[id]
	if !ok {
		return nil
	}
	a.remove(al)
	if err := a.saveLocked(); err != nil {
		a.insert(al)
		return err
	}
	return nil
}

// Allocations returns a copy of all allocations, sorted by ID.
func (a *Allocator) Allocations() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Allocation, 0, len(a.allocs))
	for _, al := range a.allocs {
		c := *al
		c.Devices = append([]string(nil), al.Devices...)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// PortStats is one port's slot counts.
type PortStats struct {
	Pool, Port string
	Capacity   int // offered slots
	Allocated  int // held slots, including any beyond capacity
	Healthy    int // offered slots that are healthy
}

// Stats returns per-port counts for every pool, including ports that are
// gone but still have allocated slots.
func (a *Allocator) Stats() []PortStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	idx := map[[2]string]*PortStats{}
	get := func(pool, port string) *PortStats {
		k := [2]string{pool, port}
		s := idx[k]
		if s == nil {
			s = &PortStats{Pool: pool, Port: port}
			idx[k] = s
		}
		return s
	}
	for name, p := range a.pools {
		for _, pt := range p.ports {
			s := get(name, pt.Name)
			s.Capacity = pt.Capacity
			if pt.Healthy {
				s.Healthy = pt.Capacity
			}
		}
	}
	for poolName, m := range a.held {
		for d := range m {
			if port, _, ok := ParseDeviceID(d); ok {
				get(poolName, port).Allocated++
			}
		}
	}
	out := make([]PortStats, 0, len(idx))
	for _, s := range idx {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pool != out[j].Pool {
			return out[i].Pool < out[j].Pool
		}
		return out[i].Port < out[j].Port
	})
	return out
}

// Held is one device the kubelet reports as assigned to a container.
type Held struct {
	Resource string
	Device   string
	Owner    Owner
}

// Reconcile compares the allocations with what the kubelet reports:
//   - an allocation none of whose devices the kubelet reports is freed when
//     it was reported before (its pod is gone), when it is older than the
//     grace period (its pod never started), or when one of its devices is in
//     reclaim (the kubelet is allocating that device to a new pod right now,
//     so it considers it free);
//   - a reported device we do not hold is adopted, so it is never issued
//     again (this rebuilds state after a lost checkpoint);
//   - owners are filled in from the report.
//
// Resources that belong to no pool and no allocation are ignored. It returns
// the freed allocations (for the caller to tear down their broker state).
func (a *Allocator) Reconcile(held []Held, reclaim []string) ([]Allocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	known := map[string]string{} // resource -> pool
	for name, p := range a.pools {
		known[p.spec.Resource] = name
	}
	for _, al := range a.allocs {
		if _, ok := known[al.Resource]; !ok {
			known[al.Resource] = al.Pool
		}
	}
	reclaimSet := make(map[string]bool, len(reclaim))
	for _, d := range reclaim {
		reclaimSet[d] = true
	}
	changed := false
	alive := map[string]bool{}
	type ownerKey struct {
		pool  string
		owner Owner
	}
	adopt := map[ownerKey][]string{}
	for _, h := range held {
		poolName, ok := known[h.Resource]
		if !ok {
			continue
		}
		id, ok := a.held[poolName][h.Device]
		if !ok {
			k := ownerKey{poolName, h.Owner}
			adopt[k] = append(adopt[k], h.Device)
			continue
		}
		al := a.allocs[id]
		alive[id] = true
		if !al.Seen || al.Owner != h.Owner {
			if al.Seen && al.Owner != h.Owner {
				a.log.Warn("allocation changed owner", "allocation", id, "from", al.Owner.String(), "to", h.Owner.String())
			}
			al.Seen, al.Owner = true, h.Owner
			delete(a.enc, id)
			changed = true
		}
	}
	now := a.opts.Now()
	var freed []Allocation
	for id, al := range a.allocs {
		if alive[id] {
			continue
		}
		reason := ""
		switch {
		case al.Seen:
			reason = "pod gone"
		case now.Sub(al.Created) > a.opts.Grace:
			reason = "never reported by the kubelet within the grace period"
		default:
			for _, d := range al.Devices {
				if reclaimSet[d] {
					reason = "device re-allocated by the kubelet"
				}
			}
		}
		if reason == "" {
			continue
		}
		a.log.Info("allocation freed", "allocation", id, "pool", al.Pool, "devices", al.Devices, "owner", al.Owner.String(), "reason", reason)
		freed = append(freed, *al)
		a.remove(al)
		changed = true
	}
	keys := make([]ownerKey, 0, len(adopt))
	for k := range adopt {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
	for _, k := range keys {
		devs := adopt[k]
		sort.Strings(devs)
		res := ""
		if p := a.pools[k.pool]; p != nil {
			res = p.spec.Resource
		}
		al := &Allocation{ID: newID(), Pool: k.pool, Resource: res, Devices: devs, Owner: k.owner,
			Created: now.UTC(), Seen: true, Adopted: true}
		a.log.Warn("adopted devices the kubelet reports but the checkpoint did not have", "allocation", al.ID, "pool", k.pool, "devices", devs, "owner", k.owner.String())
		a.insert(al)
		changed = true
	}
	if changed {
		if err := a.saveLocked(); err != nil {
			return freed, err
		}
	}
	return freed, nil
}

func (a *Allocator) saveLocked() error {
	if a.opts.CheckpointPath == "" {
		return nil
	}
	ids := make([]string, 0, len(a.allocs))
	for id := range a.allocs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	encoded := make([][]byte, len(ids))
	for i, id := range ids {
		e, ok := a.enc[id]
		if !ok {
			var err error
			if e, err = json.Marshal(a.allocs[id]); err != nil {
				return fmt.Errorf("encode allocation %s: %w", id, err)
			}
			a.enc[id] = e
		}
		encoded[i] = e
	}
	a.ckpt.submit(encoded)
	return nil
}

// Flush waits until the checkpoint holds every change made so far, and
// reports the last write error.
func (a *Allocator) Flush() error {
	if a.ckpt == nil {
		return nil
	}
	return a.ckpt.flush()
}

// Close writes the pending checkpoint and stops the background writer.
func (a *Allocator) Close() error {
	if a.ckpt == nil {
		return nil
	}
	return a.ckpt.close()
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // documented never to fail (Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}
