package viservice

// Read-only accessors for diagnostics (pkg/introspect, efvictl, metrics).

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
)

// sockRefs are the XSKs sessions hold, by VI slot.
type sockRefs map[uint32]*xsk.Socket

// trackSocket records a session's live socket for a slot.
func (a *Allocation) trackSocket(slot uint32, s *xsk.Socket) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.socks == nil {
		a.socks = sockRefs{}
	}
	a.socks[slot] = s
}

// untrackSocket forgets a slot's socket; call it before closing the socket.
func (a *Allocation) untrackSocket(slot uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.socks, slot)
}

// SocketStats reads XDP_STATISTICS of the XSK a session holds for slot.
// live is false when no session of this agent holds one (no VI allocated, or
// a VI adopted from a previous agent whose socket only the pod holds).
func (a *Allocation) SocketStats(slot uint32) (st xsk.Stats, live bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock() // held so a session cannot close the fd meanwhile
	s := a.socks[slot]
	if s == nil {
		return xsk.Stats{}, false, nil
	}
	if err := xsk.Statistics(int(s.FD.Fd()), &st); err != nil {
		return xsk.Stats{}, true, fmt.Errorf("statistics of VI slot %d's socket: %w", slot, err)
	}
	return st, true, nil
}

// AllocationRef is a registered allocation with its id.
type AllocationRef struct {
	ID         string
	Allocation *Allocation
}

// Allocations lists the registered allocations, sorted by id.
func (r *Registry) Allocations() []AllocationRef {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]AllocationRef, 0, len(r.allocs))
	for id, a := range r.allocs {
		out = append(out, AllocationRef{ID: id, Allocation: a})
	}
	slices.SortFunc(out, func(x, y AllocationRef) int { return strings.Compare(x.ID, y.ID) })
	return out
}

// FilterOwner is one filter of a port's table with who installed it.
type FilterOwner struct {
	filter.Entry
	// Attachment is the CNI attachment key that installed the filter, or ""
	// when a pod's SDK session added it.
	Attachment string
}

// FilterOwners lists the port's filters with their owners, by cookie.
func (p *Port) FilterOwners() []FilterOwner {
	p.mu.Lock()
	defer p.mu.Unlock()
	byCookie := map[filter.Cookie]string{}
	for key, att := range p.attachments {
		for _, d := range att {
			byCookie[d.Cookie] = key
		}
	}
	entries := p.table.List()
	out := make([]FilterOwner, 0, len(entries))
	for _, e := range entries {
		out = append(out, FilterOwner{Entry: e, Attachment: byCookie[e.Cookie]})
	}
	slices.SortFunc(out, func(x, y FilterOwner) int { return cmp.Compare(x.Cookie, y.Cookie) })
	return out
}

// DataPlaneVIs lists the VI ids the port's data plane holds (including VIs
// adopted from a previous agent), sorted, when the data plane can list them.
func (p *Port) DataPlaneVIs() ([]uint32, bool) {
	l, ok := p.Plane.(interface{ VIs() []uint32 })
	if !ok {
		return nil, false
	}
	ids := l.VIs()
	slices.Sort(ids)
	return ids, true
}
