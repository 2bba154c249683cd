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
//     is freed, to register it as the UMEM of the VIs that use it. The pod
//     populates the memfd (fallocate; broker.Client.RegisterMemory does) before
//     ALLOC_VI, which refuses an unpopulated region: the memory cgroup charges
//     a shmem page to whoever allocates it, so the pod's memory limit pays for
//     its packet memory, not the agent's, although the agent pins it.
//   - ef_vi_alloc_from_pd → the data plane's veth pair for one of the
//     allocation's VI slots, an AF_XDP socket bound to its inner end with the
//     region as UMEM, inserted in the xskmap, and passed to the pod. The agent
//     keeps a reference so it can read the socket's statistics and free it when
//     the client goes; the pod's copy keeps the VI alive across an agent
//     restart.
//   - ef_vi_filter_add/del → parse (efsink grammar; the host defaults to the
//     pod's first IP), policy check (own IPs only; multicast and wide filters by
//     allowance), the port's filter table (EEXIST/EBUSY), then the data plane.
//   - closing the connection frees everything the client held: the filters it
//     added, its sockets, its memory. The VI slot's data-plane veths stay
//     while filters the CNI installed for the pod (an "attachment") remain.
//
// # Limits
//
// What an allocation holds is counted per allocation, over all its sessions
// (Limits, account.go): pinned packet memory, live VI sockets and filters the
// SDK added; the broker bounds its concurrent sessions. A VI socket and its
// UMEM stay counted after the session that made it ends, for as long as the
// kernel keeps the socket (the pod, or whoever it passed the fd to, still
// holds it): the agent asks the kernel through sock_diag for AF_XDP
// (xsk_diag). Without xsk_diag it scans /proc/*/fd instead, which cannot see
// an fd in flight in a unix socket, so a pod hiding its fds there gets its
// budget back early; load xsk_diag on nodes that run untrusted pods. Over a
// limit the request fails with ENOMEM (memory), EBUSY (VIs, sessions) or
// ENOSPC (filters), naming the limit's config field, and the limit reporter
// (a pod event) is told.
//
// The memory charge is where it belongs in the normal case: the pages are
// allocated by the pod. A pod that punches holes in its region between the
// agent's check and the pinning makes the agent allocate those pages; that
// is bounded by the pinned-memory limit, which counts them either way.
//
// Filters have two kinds of owner on a VI slot: the pod's SDK sessions
// (removed when the session ends) and the node's CNI attachments (installed
// at pod start for the pod's own IPs, removed at CNI DEL). Both pass the same
// policy and the same per-port table. The table and the attachments are
// persisted per port, so a restarted agent still knows what a later DEL must
// remove.
//
// A VI's id on the wire is its slot number on the port plus one (slot N is
// the device id "<port>-vi<N>"; wire ids are never 0), so ids are stable and
// unique per port.
package viservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"

	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// DataPlane is what the service needs from a port's data plane; *dataplane.Port
// implements it.
type DataPlane interface {
	CreateVI(ctx context.Context, c dataplane.VIConfig) (*dataplane.VI, error)
	VI(id uint32) (*dataplane.VI, bool)
	DestroyVI(id uint32) error
	InstallFilter(vi uint32, s filter.Spec) (dataplane.Handle, error)
	RemoveFilter(h dataplane.Handle) error
	FilterHits(h dataplane.Handle) (uint64, error)
	VICounters(id uint32) (dataplane.Counters, error)
}

// Port is one port as the service sees it: its data plane, its filter table
// and the CNI attachments' filters, shared by every allocation on the port.
type Port struct {
	Name  string // interface name, e.g. "eth1"
	MAC   [6]byte
	MTU   int
	Plane DataPlane

	// Retired, if set, is called (without locks held) after an idle slot's
	// VI was destroyed. The software backend re-creates a fresh VI for the
	// slot in the background (Warm), so the next pod's CNI ADD does not pay
	// for a veth pair and its XDP programs. A VI is never handed from one
	// pod to the next: destroying the veth is what revokes the old pod's
	// socket (an AF_XDP socket stays bound while any process holds its fd).
	Retired func(slot uint32)

	mu          sync.Mutex // serialises table, attachments and data-plane changes
	table       *filter.Table
	attachments map[string][]AttachedFilter
	statePath   string
	gen         uint64 // generation of the snapshot (journal.go)
	journalLen  int    // records appended since the snapshot
	logErr      error  // journal appends that failed since persistLocked
}

// AttachedFilter is one filter a CNI attachment installed.
type AttachedFilter struct {
	Slot   uint32        `json:"slot"`
	Cookie filter.Cookie `json:"cookie"`
}

// portState is what Persist keeps on disk (the snapshot; see journal.go).
type portState struct {
	Gen         uint64                      `json:"gen,omitempty"`
	Filters     []filter.Entry              `json:"filters"`
	Attachments map[string][]AttachedFilter `json:"attachments,omitempty"`
}

// NewPort wraps a data plane. mac and mtu are the port's, told to clients so
// they can build frames.
func NewPort(name string, mac net.HardwareAddr, mtu int, plane DataPlane) (*Port, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("port %s: MAC %q is not 6 bytes", name, mac)
	}
	p := &Port{Name: name, MTU: mtu, Plane: plane, table: filter.NewTable(), attachments: map[string][]AttachedFilter{}}
	copy(p.MAC[:], mac)
	return p, nil
}

// Filters lists the port's filter table.
func (p *Port) Filters() []filter.Entry { return p.table.List() }

// Warm creates the data-plane VIs of slots that have none, with no allowed
// TX sources, so a pod's CNI ADD finds its VI ready. It stops at ctx's end
// and returns how many it created.
func (p *Port) Warm(ctx context.Context, slots []uint32) (int, error) {
	n := 0
	for _, s := range slots {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		p.mu.Lock()
		_, ok := p.Plane.VI(s)
		var err error
		if !ok {
			_, err = p.Plane.CreateVI(ctx, dataplane.VIConfig{ID: s, SrcMAC: p.MAC})
		}
		p.mu.Unlock()
		if err != nil {
			return n, fmt.Errorf("warm VI slot %d on %s: %w", s, p.Name, err)
		}
		if !ok {
			n++
		}
	}
	return n, nil
}

// Persist makes the port keep its filter table and attachments in path (a
// snapshot, and a journal of changes in path.journal: see journal.go) and
// restores them from there if they exist, so a restarted agent knows who
// owns the filters its data plane still holds. Without saved state the
// port's current table becomes the first snapshot.
func (p *Port) Persist(path string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := loadState(path)
	if err != nil {
		return err
	}
	_, serr := os.Stat(path)
	_, jerr := os.Stat(path + ".journal")
	if serr == nil || jerr == nil {
		if err := p.table.Restore(st.Filters); err != nil {
			return fmt.Errorf("restore filter state from %s: %w", path, err)
		}
		if len(st.Attachments) > 0 {
			p.attachments = st.Attachments
		}
	}
	p.statePath, p.gen = path, st.Gen
	return p.compactLocked()
}

// addFilterLocked applies policy, the table and the data plane, in that
// order, undoing the table entry if the data plane refuses.
func (p *Port) addFilterLocked(owner filter.VIID, spec filter.Spec, pol filter.Policy) (filter.Cookie, error) {
	if err := pol.Check(spec); err != nil {
		return 0, err
	}
	cookie, err := p.table.Add(owner, spec)
	if err != nil {
		return 0, err
	}
	if _, err := p.Plane.InstallFilter(uint32(owner), spec); err != nil {
		if derr := p.table.Del(owner, cookie); derr != nil {
			err = errors.Join(err, derr)
		}
		return 0, fmt.Errorf("install filter %s on VI %d: %w", spec, owner, err)
	}
	p.logLocked(journalRecord{Add: &filter.Entry{Cookie: cookie, Owner: owner, Spec: spec}})
	return cookie, nil
}

// delFilterLocked removes one filter from the data plane and the table.
func (p *Port) delFilterLocked(owner filter.VIID, cookie filter.Cookie) error {
	e, ok := p.table.Lookup(cookie)
	if !ok || e.Owner != owner {
		return &filter.Error{Errno: syscall.ENOENT, Reason: fmt.Sprintf("no filter with cookie %d on VI %d", cookie, owner)}
	}
	if err := p.Plane.RemoveFilter(dataplane.Handle{VI: uint32(owner), Spec: e.Spec}); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("remove filter %s from VI %d: %w", e.Spec, owner, err)
	}
	if err := p.table.Del(owner, cookie); err != nil {
		return err
	}
	p.logLocked(journalRecord{Del: cookie})
	return nil
}

// AddFilter adds one filter for a VI slot under a policy.
func (p *Port) AddFilter(owner filter.VIID, spec filter.Spec, pol filter.Policy) (filter.Cookie, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, err := p.addFilterLocked(owner, spec, pol)
	if err != nil {
		return 0, err
	}
	return c, p.persistLocked()
}

// DelFilter removes one filter of a VI slot.
func (p *Port) DelFilter(owner filter.VIID, cookie filter.Cookie) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.delFilterLocked(owner, cookie); err != nil {
		return err
	}
	return p.persistLocked()
}

// Attach installs a CNI attachment's filters on a VI slot, all or nothing.
// key names the attachment (e.g. container id + ifname). Attaching a key that
// is already attached is EEXIST: DEL it first.
func (p *Port) Attach(key string, slot uint32, specs []filter.Spec, pol filter.Policy) ([]filter.Cookie, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.attachments[key]; ok {
		return nil, &filter.Error{Errno: syscall.EEXIST, Reason: fmt.Sprintf("attachment %s already has filters on port %s; delete it first", key, p.Name)}
	}
	var done []AttachedFilter
	for _, s := range specs {
		c, err := p.addFilterLocked(filter.VIID(slot), s, pol)
		if err != nil {
			for _, d := range done {
				if derr := p.delFilterLocked(filter.VIID(d.Slot), d.Cookie); derr != nil {
					err = errors.Join(err, derr)
				}
			}
			return nil, fmt.Errorf("attachment %s: %w", key, err)
		}
		done = append(done, AttachedFilter{Slot: slot, Cookie: c})
	}
	p.attachments[key] = done
	p.logLocked(journalRecord{Attach: key, Filters: done})
	cookies := make([]filter.Cookie, len(done))
	for i, d := range done {
		cookies[i] = d.Cookie
	}
	return cookies, p.persistLocked()
}

// Detach removes an attachment's filters. It is idempotent: an unknown key
// (already detached, or never attached) is not an error.
func (p *Port) Detach(key string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, d := range p.attachments[key] {
		if err := p.delFilterLocked(filter.VIID(d.Slot), d.Cookie); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, err)
		}
	}
	if _, ok := p.attachments[key]; ok {
		delete(p.attachments, key)
		p.logLocked(journalRecord{Detach: key})
	}
	return errors.Join(append(errs, p.persistLocked())...)
}

// CheckAttachment verifies that every filter of the attachment is in the
// table and live in the data plane.
func (p *Port) CheckAttachment(key string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	att, ok := p.attachments[key]
	if !ok {
		return &filter.Error{Errno: syscall.ENOENT, Reason: fmt.Sprintf("attachment %s has no filters on port %s", key, p.Name)}
	}
	for _, d := range att {
		e, ok := p.table.Lookup(d.Cookie)
		if !ok {
			return &filter.Error{Errno: syscall.ENOENT, Reason: fmt.Sprintf("attachment %s: filter cookie %d is missing from the table", key, d.Cookie)}
		}
		if _, err := p.Plane.FilterHits(dataplane.Handle{VI: d.Slot, Spec: e.Spec}); err != nil {
			return fmt.Errorf("attachment %s: filter %s on VI %d is not live in the data plane: %w", key, e.Spec, d.Slot, err)
		}
	}
	return nil
}

// Attachments lists the attachment keys on this port, sorted.
func (p *Port) Attachments() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := make([]string, 0, len(p.attachments))
	for k := range p.attachments {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// slotAttached reports whether any attachment holds filters on slot.
func (p *Port) slotAttached(slot uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, att := range p.attachments {
		for _, d := range att {
			if d.Slot == slot {
				return true
			}
		}
	}
	return false
}

// removeCookies removes the given filters of a VI slot (a session's own).
func (p *Port) removeCookies(owner filter.VIID, cookies []filter.Cookie) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, c := range cookies {
		if err := p.delFilterLocked(owner, c); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, err)
		}
	}
	return errors.Join(append(errs, p.persistLocked())...)
}

// removeOwner drops every filter of a VI slot and forgets attachments that
// pointed at it.
func (p *Port) removeOwner(owner filter.VIID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, e := range p.table.RemoveOwner(owner) {
		if err := p.Plane.RemoveFilter(dataplane.Handle{VI: uint32(owner), Spec: e.Spec}); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("remove filter %s: %w", e.Spec, err))
		}
	}
	for k, att := range p.attachments {
		att = slices.DeleteFunc(att, func(d AttachedFilter) bool { return d.Slot == uint32(owner) })
		if len(att) == 0 {
			delete(p.attachments, k)
		} else {
			p.attachments[k] = att
		}
	}
	p.logLocked(journalRecord{RemoveOwner: &owner})
	return errors.Join(append(errs, p.persistLocked())...)
}
