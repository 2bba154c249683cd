package filter

import (
	"fmt"
	"slices"
	"sync"
	"syscall"
)

// VIID identifies a VI on the port (the owner of filters).
type VIID uint32

// Cookie identifies one installed filter (ef_filter_cookie). Cookies are
// never 0 and never reused within a Table's life.
type Cookie uint64

// Entry is one installed filter. It is plain data; the Spec marshals as its
// canonical text, so a []Entry is a stable JSON snapshot.
type Entry struct {
	Cookie Cookie `json:"cookie"`
	Owner  VIID   `json:"owner"`
	Spec   Spec   `json:"spec"`
}

// Table is the filter table of one port: who owns which filter, with
// ef_filter_add's conflict answers. It knows nothing about the data plane;
// callers program the data plane from what Add/Del/RemoveOwner report.
// A Table is safe for concurrent use; the zero value is an empty table.
//
// Conflict rules (Add):
//   - Specs are compared by their criteria; flags do not make a filter
//     different (two VIs cannot both steal udp:10.0.0.1:5000, whatever flags).
//   - An identical spec already owned by the same VI: EEXIST.
//   - Sniff (and separately tx-sniff): one owner per port; another VI gets
//     EBUSY whatever its promisc setting, the same VI gets EEXIST.
//   - An identical multicast spec (IsMulticast) owned by other VIs: allowed;
//     the group replicates to every owner (Owners).
//   - An identical block-kernel spec owned by other VIs: allowed, as the sfc
//     driver reference-counts kernel blocks; the block holds while any owner
//     remains. (Decision: a block is not stolen traffic, so sharing is safe.)
//   - Any other identical spec owned by another VI: EEXIST.
//   - Overlapping but different specs (e.g. local and full for the same
//     port) are allowed: the more specific class wins, as on the NIC.
type Table struct {
	mu    sync.Mutex
	last  Cookie // last cookie issued
	state tableState
}

type tableState struct {
	byCookie map[Cookie]Entry
	byKey    map[Spec][]Cookie // key(spec) -> cookies in add order
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{state: newState()}
}

func newState() tableState {
	return tableState{byCookie: map[Cookie]Entry{}, byKey: map[Spec][]Cookie{}}
}

// key is what makes two specs "identical" for conflicts: flags are ignored,
// and every sniff is the same sniff.
func key(s Spec) Spec {
	s.Flags = 0
	if s.Match == MatchSniff {
		s.Promisc = false
	}
	return s
}

func shareable(s Spec) bool {
	return s.IsMulticast() || s.Match == MatchBlockKernel
}

// check returns the conflict answer for owner adding s, or nil.
func (st *tableState) check(owner VIID, s Spec) error {
	for _, c := range st.byKey[key(s)] {
		e := st.byCookie[c]
		switch {
		case e.Owner == owner:
			return newError(syscall.EEXIST, s.String(),
				"VI %d already owns this filter (cookie %d); delete it first or keep using it", owner, c)
		case s.Match == MatchSniff || s.Match == MatchTxSniff:
			return newError(syscall.EBUSY, s.String(),
				"the port already has a %s owner, VI %d (cookie %d); only one VI per port may sniff", s.Class(), e.Owner, c)
		case !shareable(s):
			return newError(syscall.EEXIST, s.String(),
				"already owned by VI %d (cookie %d); only multicast and block-kernel filters can be shared: use another address or port", e.Owner, c)
		}
	}
	return nil
}

func (st *tableState) insert(e Entry) {
	st.byCookie[e.Cookie] = e
	k := key(e.Spec)
	st.byKey[k] = append(st.byKey[k], e.Cookie)
}

func (st *tableState) remove(c Cookie) {
	e := st.byCookie[c]
	delete(st.byCookie, c)
	k := key(e.Spec)
	list := slices.DeleteFunc(st.byKey[k], func(x Cookie) bool { return x == c })
	if len(list) == 0 {
		delete(st.byKey, k)
	} else {
		st.byKey[k] = list
	}
}

// Add installs s for owner and returns its cookie. Errors: EINVAL (Validate),
// EEXIST, EBUSY (see Table).
func (t *Table) Add(owner VIID, s Spec) (Cookie, error) {
	if err := s.Validate(); err != nil {
		return 0, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state.byCookie == nil {
		t.state = newState()
	}
	if err := t.state.check(owner, s); err != nil {
		return 0, err
	}
	t.last++
	e := Entry{Cookie: t.last, Owner: owner, Spec: s}
	t.state.insert(e)
	return e.Cookie, nil
}

// Del removes owner's filter cookie (ef_vi_filter_del). ENOENT if no filter
// has that cookie or owner does not own it. Use Lookup first to learn what the
// cookie steers.
func (t *Table) Del(owner VIID, cookie Cookie) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.state.byCookie[cookie]
	if !ok || e.Owner != owner {
		return newError(syscall.ENOENT, "",
			"VI %d owns no filter with cookie %d; list the VI's filters to find the right cookie", owner, cookie)
	}
	t.state.remove(cookie)
	return nil
}

// RemoveOwner removes every filter of owner (as freeing a VI does) and
// returns them, sorted by cookie.
func (t *Table) RemoveOwner(owner VIID) []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Entry
	for _, e := range t.state.byCookie {
		if e.Owner == owner {
			out = append(out, e)
		}
	}
	sortEntries(out)
	for _, e := range out {
		t.state.remove(e.Cookie)
	}
	return out
}

// Owners returns the VIs owning a filter identical to s (a replicate group
// for multicast specs), sorted, without duplicates.
func (t *Table) Owners(s Spec) []VIID {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []VIID
	for _, c := range t.state.byKey[key(s)] {
		out = append(out, t.state.byCookie[c].Owner)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Lookup returns the filter with the cookie.
func (t *Table) Lookup(cookie Cookie) (Entry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.state.byCookie[cookie]
	return e, ok
}

// Len is the number of installed filters.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.state.byCookie)
}

// List returns every filter sorted by cookie (the order they were added).
func (t *Table) List() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Entry, 0, len(t.state.byCookie))
	for _, e := range t.state.byCookie {
		out = append(out, e)
	}
	sortEntries(out)
	return out
}

// Snapshot returns the table's contents for persistence (same as List).
func (t *Table) Snapshot() []Entry { return t.List() }

// Restore replaces the table's contents with entries, e.g. a Snapshot
// persisted before an agent restart. Every entry is validated and checked for
// conflicts as Add does, cookies must be non-zero and unique. On error the
// table is unchanged. Cookies issued afterwards are above every restored
// cookie and every cookie this Table issued before.
func (t *Table) Restore(entries []Entry) error {
	sorted := slices.Clone(entries)
	sortEntries(sorted)
	st := newState()
	var maxCookie Cookie
	for i, e := range sorted {
		wrap := func(err error) error {
			return fmt.Errorf("restore filter %d of %d (cookie %d, VI %d, %s): %w", i+1, len(sorted), e.Cookie, e.Owner, e.Spec, err)
		}
		if e.Cookie == 0 {
			return wrap(newError(syscall.EINVAL, e.Spec.String(), "cookie 0 is never issued; the snapshot is corrupt"))
		}
		if _, dup := st.byCookie[e.Cookie]; dup {
			return wrap(newError(syscall.EEXIST, e.Spec.String(), "cookie %d appears twice; the snapshot is corrupt", e.Cookie))
		}
		if err := e.Spec.Validate(); err != nil {
			return wrap(err)
		}
		if err := st.check(e.Owner, e.Spec); err != nil {
			return wrap(err)
		}
		st.insert(e)
		maxCookie = max(maxCookie, e.Cookie)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.state = st
	t.last = max(t.last, maxCookie)
	return nil
}

func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int {
		switch {
		case a.Cookie < b.Cookie:
			return -1
		case a.Cookie > b.Cookie:
			return 1
		}
		return 0
	})
}
