package viservice

// Per-allocation accounting of what the kernel holds for a pod.

import (
	"fmt"
	"maps"
	"slices"
	"syscall"

	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
)

// SocketProber tells which AF_XDP sockets still exist in the kernel (closed
// by every holder or not); xsk.Prober implements it.
type SocketProber interface {
	Live(inodes []uint64) (map[uint64]bool, error)
}

// Usage is what an allocation holds, as counted against its Limits.
type Usage struct {
	// PinnedBytes is the packet memory of the allocation's live VI sockets
	// (UMEMs pinned in the kernel) plus regions registered and not yet
	// backing a VI.
	PinnedBytes uint64
	// VIs is the allocation's live VI sockets, including ones only the pod
	// still holds after its connection ended.
	VIs int
	// Filters is the filters the allocation's sessions added.
	Filters int
}

// account is an allocation's usage. An XSK stays charged from its creation
// until the prober says the kernel freed it: closing the agent's copy is not
// enough, the pod (or whoever it passed the fd to) may keep it open, and its
// UMEM stays pinned meanwhile.
type account struct {
	regions uint64            // bytes registered by sessions, not backing a VI
	xsks    map[uint64]uint64 // socket inode -> UMEM bytes
	filters int
}

// setting names a limit's config field for messages.
func (a *Allocation) setting(field string) string {
	if a.Limits.Setting == "" {
		return "the allocation's " + field + " limit"
	}
	return a.Limits.Setting + "." + field
}

// limitErr builds the error for an exceeded limit and reports it (the pod's
// event) once per call.
func (a *Allocation) limitErr(errno syscall.Errno, format string, args ...any) error {
	err := broker.Errorf(errno, format, args...)
	a.Logger.Warn("allocation limit reached", "devices", a.Devices, "err", err.Msg)
	if f := a.onLimit(); f != nil {
		f(err.Msg)
	}
	return err
}

func (a *Allocation) onLimit() func(string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.limitReporter
}

// SetLimitReporter sets what is told, with the message, when the
// allocation's pod hits a limit (the attach service posts a pod event).
func (a *Allocation) SetLimitReporter(f func(msg string)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.limitReporter = f
}

// reclaimLocked forgets XSKs the kernel has freed.
func (a *Allocation) reclaimLocked() {
	if len(a.acct.xsks) == 0 {
		return
	}
	p := a.Prober
	if p == nil {
		p = xsk.Prober{}
	}
	live, err := p.Live(slices.Collect(maps.Keys(a.acct.xsks)))
	if err != nil {
		a.Logger.Warn("cannot tell which VI sockets the kernel still holds; keeping them counted", "err", err)
		return
	}
	for ino := range a.acct.xsks {
		if !live[ino] {
			delete(a.acct.xsks, ino)
		}
	}
}

func (a *Allocation) pinnedLocked() uint64 {
	n := a.acct.regions
	for _, b := range a.acct.xsks {
		n += b
	}
	return n
}

// Usage returns what the allocation holds now (after forgetting sockets
// the kernel has freed).
func (a *Allocation) Usage() Usage {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.reclaimLocked()
	return Usage{PinnedBytes: a.pinnedLocked(), VIs: len(a.acct.xsks), Filters: a.acct.filters}
}

// chargeRegion counts a new memory region of size bytes, or refuses it.
func (a *Allocation) chargeRegion(size uint64) error {
	lim := a.Limits.withDefaults()
	a.mu.Lock()
	if a.pinnedLocked()+size > lim.MaxMemory {
		a.reclaimLocked()
	}
	used := a.pinnedLocked()
	if used+size > lim.MaxMemory {
		a.mu.Unlock()
		return a.limitErr(syscall.ENOMEM, "register memory: %d bytes on top of the %d this pod already pins (live VI sockets, including ones its earlier connections left open, and registered regions) exceed the limit of %d bytes; close old VIs or raise %s",
			size, used, lim.MaxMemory, a.setting("pinnedMemory"))
	}
	a.acct.regions += size
	a.mu.Unlock()
	return nil
}

func (a *Allocation) releaseRegion(size uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acct.regions -= min(size, a.acct.regions)
}

// checkVI refuses a new VI socket over the VI limit.
func (a *Allocation) checkVI() error {
	lim := a.Limits.withDefaults()
	a.mu.Lock()
	if len(a.acct.xsks) >= lim.MaxVIs {
		a.reclaimLocked()
	}
	n := len(a.acct.xsks)
	a.mu.Unlock()
	if n >= lim.MaxVIs {
		return a.limitErr(syscall.EBUSY, "alloc VI: this pod already has %d live VI sockets (including ones its earlier connections left open), the limit; close them or raise %s", n, a.setting("vis"))
	}
	return nil
}

// chargeXSK moves a region's bytes to the socket that now pins them.
func (a *Allocation) chargeXSK(ino, size uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acct.regions -= min(size, a.acct.regions)
	if a.acct.xsks == nil {
		a.acct.xsks = map[uint64]uint64{}
	}
	a.acct.xsks[ino] = size
}

// chargeFilter counts one more filter, or refuses it.
func (a *Allocation) chargeFilter() error {
	lim := a.Limits.withDefaults()
	a.mu.Lock()
	n := a.acct.filters
	if n < lim.MaxFilters {
		a.acct.filters++
	}
	a.mu.Unlock()
	if n >= lim.MaxFilters {
		return a.limitErr(syscall.ENOSPC, "filter add: this pod already has %d filters, the limit; remove some or raise %s", n, a.setting("filters"))
	}
	return nil
}

func (a *Allocation) releaseFilters(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.acct.filters -= min(n, a.acct.filters)
}

// String describes the usage for logs.
func (u Usage) String() string {
	return fmt.Sprintf("pinned %d bytes, %d VIs, %d filters", u.PinnedBytes, u.VIs, u.Filters)
}
