package efvi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
)

// Handles name control-plane objects inside one Backend session.
type (
	PDHandle     uint32
	MemoryHandle uint32
	VIHandle     uint32
	// FilterCookie is ef_filter_cookie: what FilterDel needs.
	FilterCookie uint64
)

// PDRequest is what AllocPD asks for (ef_pd_alloc / _by_name / _with_vport).
type PDRequest struct {
	// Interface names the port or pool ("" = the allocation's default).
	Interface string
	// VLAN: >= 0 asks for a vport on that VLAN (ef_pd_alloc_with_vport);
	// -1 = none.
	VLAN int
	// Flags mirror enum ef_pd_flags (backend-specific meaning).
	Flags uint32
}

// MemoryGrant is a registered memory region as a backend hands it out.
type MemoryGrant struct {
	Handle MemoryHandle
	// File is the region: the software backend's sealed memfd, which the
	// SDK maps. The SDK owns it from now on.
	File    *os.File
	NumBufs int
	BufSize int
}

// VIRequest is what AllocVI asks for (ef_vi_alloc_from_pd). Capacities:
// -1 = default, 0 = no such ring.
type VIRequest struct {
	EvqCap, RxqCap, TxqCap int
	Flags                  uint32 // ef_vi_flags (backend-specific meaning)
}

// VIGrant is an allocated VI as a backend hands it out.
type VIGrant struct {
	Handle VIHandle
	// File is the bound AF_XDP socket (software backend). The SDK owns it.
	File *os.File
	// Geometry describes the socket's UMEM and rings.
	Geometry xsk.Geometry
	Instance int
	MAC      [6]byte
	MTU      int
}

// Backend is the control plane of a VI provider: everything ef_vi does
// through the driver handle, and nothing on the data path. The broker
// client (the pod's side of the per-allocation unix socket) implements it
// for the software backend; the agent does the privileged work and answers
// with fds.
//
// The libciul hardware backend (hw_onload.go, -tags onload) implements it
// too, plus registering memory the SDK mapped itself and allocating its own
// VI type (*HardwareVI); both VI types satisfy DataPath and
// VirtualInterface.
type Backend interface {
	AllocPD(ctx context.Context, req PDRequest) (PDHandle, error)
	RegisterMemory(ctx context.Context, pd PDHandle, nbufs int) (MemoryGrant, error)
	AllocVI(ctx context.Context, pd PDHandle, mem MemoryHandle, req VIRequest) (VIGrant, error)
	FilterAdd(ctx context.Context, vi VIHandle, spec filter.Spec) (FilterCookie, error)
	FilterDel(ctx context.Context, vi VIHandle, cookie FilterCookie) error
	// VIStats returns backend-side counters (e.g. data-plane drops) by name.
	VIStats(ctx context.Context, vi VIHandle) (map[string]uint64, error)
	FreeVI(ctx context.Context, vi VIHandle) error
	FreeMemory(ctx context.Context, mem MemoryHandle) error
	FreePD(ctx context.Context, pd PDHandle) error
	// Close ends the session; the backend frees whatever is left.
	Close() error
}

// DataPath is the per-packet API every VI implementation has. Code that
// must run on either backend can take a DataPath (one interface call per
// operation); code that wants the fastest path uses *VI directly.
type DataPath interface {
	ReceiveInit(addr Addr, id RqID) error
	ReceivePush()
	ReceivePost(addr Addr, id RqID) error
	ReceiveSpace() int
	ReceiveFillLevel() int
	ReceiveCapacity() int
	ReceiveSetDiscards(mask DiscardMask) DiscardMask
	RxFrame(ev *Event) []byte
	TransmitInit(addr Addr, length int, id RqID) error
	TransmitPush()
	Transmit(addr Addr, length int, id RqID) error
	TransmitUnbundle(ev *Event, ids []RqID) int
	TransmitSpace() int
	TransmitFillLevel() int
	TransmitCapacity() int
	EventQPoll(evs []Event) int
	EventQHasEvent() bool
	EventQPut(data uint16) error
	Prime() error
	Wait(timeout time.Duration) error
	Stats() (Stats, error)
	Close() error
}

var _ DataPath = (*VI)(nil)

// Driver is ef_driver_handle: a session with a Backend.
type Driver struct {
	b    Backend
	info AllocationInfo
}

// Open starts using backend (ef_driver_open). Close the Driver to end the
// session; the backend frees what is left.
func Open(backend Backend) (*Driver, error) {
	if backend == nil {
		return nil, errors.New("efvi open: nil backend")
	}
	return &Driver{b: backend}, nil
}

// Close ends the session (ef_driver_close).
func (d *Driver) Close() error { return d.b.Close() }

// PD is a protection domain (ef_pd).
type PD struct {
	d      *Driver
	handle PDHandle
}

// AllocPD allocates a protection domain (ef_pd_alloc).
func (d *Driver) AllocPD(ctx context.Context, req PDRequest) (*PD, error) {
	h, err := d.b.AllocPD(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("alloc PD on %q: %w", req.Interface, err)
	}
	return &PD{d: d, handle: h}, nil
}

// Free frees the PD (ef_pd_free).
func (pd *PD) Free(ctx context.Context) error { return pd.d.b.FreePD(ctx, pd.handle) }

// RegisteredMemory is a Memory registered with a PD (ef_memreg).
type RegisteredMemory struct {
	*Memory
	pd     *PD
	handle MemoryHandle
}

// RegisterMemory asks the backend for a memory region of nbufs packet
// buffers and maps it (ef_memreg_alloc). The software backend cannot
// register memory the app allocated itself: the agent creates it (a sealed
// memfd) so the kernel and the pod share it.
func (pd *PD) RegisterMemory(ctx context.Context, nbufs int) (*RegisteredMemory, error) {
	if hb, ok := pd.d.b.(hardwareBackend); ok {
		m, h, err := hb.registerHardwareMemory(ctx, pd.handle, nbufs)
		if err != nil {
			return nil, fmt.Errorf("register memory (%d buffers): %w", nbufs, err)
		}
		return &RegisteredMemory{Memory: m, pd: pd, handle: h}, nil
	}
	g, err := pd.d.b.RegisterMemory(ctx, pd.handle, nbufs)
	if err != nil {
		return nil, fmt.Errorf("register memory (%d buffers): %w", nbufs, err)
	}
	m, err := MapMemory(g.File, g.NumBufs, g.BufSize)
	if err != nil {
		_ = pd.d.b.FreeMemory(ctx, g.Handle)
		return nil, fmt.Errorf("register memory (%d buffers): %w", nbufs, err)
	}
	return &RegisteredMemory{Memory: m, pd: pd, handle: g.Handle}, nil
}

// Free unmaps the region and frees it (ef_memreg_free). Free VIs using it
// first.
func (m *RegisteredMemory) Free(ctx context.Context) error {
	return errors.Join(m.Memory.Close(), m.pd.d.b.FreeMemory(ctx, m.handle))
}

// AllocVI allocates a VI over mem (ef_vi_alloc_from_pd). The software
// backend's VI uses exactly one memory region, mem, for RX and TX.
func (pd *PD) AllocVI(ctx context.Context, mem *RegisteredMemory, req VIRequest, opts Options) (*VI, error) {
	if _, ok := pd.d.b.(hardwareBackend); ok {
		return nil, errHardwarePD
	}
	g, err := pd.d.b.AllocVI(ctx, pd.handle, mem.handle, req)
	if err != nil {
		return nil, fmt.Errorf("alloc VI: %w", err)
	}
	opts.Instance = uint16(g.Instance)
	opts.MAC = g.MAC
	opts.MTU = g.MTU
	fd, err := dupFile(g.File)
	if err != nil {
		_ = pd.d.b.FreeVI(ctx, g.Handle)
		return nil, err
	}
	v, err := NewSoftwareVI(fd, mem.Memory, g.Geometry, opts)
	if err != nil {
		_ = pd.d.b.FreeVI(ctx, g.Handle)
		return nil, fmt.Errorf("alloc VI: %w", err)
	}
	v.backend, v.handle = pd.d.b, g.Handle
	return v, nil
}

// dupFile turns an *os.File into a raw fd the VI owns, closing the File.
func dupFile(f *os.File) (int, error) {
	if f == nil {
		return -1, errors.New("alloc VI: backend returned no socket fd")
	}
	defer f.Close()
	fd, err := dupCloexec(int(f.Fd()))
	if err != nil {
		return -1, fmt.Errorf("alloc VI: dup socket fd: %w", err)
	}
	return fd, nil
}

// FilterAdd installs a filter on the VI through its backend
// (ef_vi_filter_add); errors carry ef_vi's errnos (EPERM, EEXIST, EBUSY,
// EINVAL, EPROTONOSUPPORT).
func (v *VI) FilterAdd(ctx context.Context, spec filter.Spec) (FilterCookie, error) {
	if v.backend == nil {
		return 0, ErrNoBackend
	}
	c, err := v.backend.FilterAdd(ctx, v.handle, spec)
	if err != nil {
		return 0, fmt.Errorf("filter add: %w", err)
	}
	return c, nil
}

// FilterDel removes a filter (ef_vi_filter_del).
func (v *VI) FilterDel(ctx context.Context, cookie FilterCookie) error {
	if v.backend == nil {
		return ErrNoBackend
	}
	if err := v.backend.FilterDel(ctx, v.handle, cookie); err != nil {
		return fmt.Errorf("filter del %#x: %w", uint64(cookie), err)
	}
	return nil
}

// BackendStats returns the backend's counters for this VI.
func (v *VI) BackendStats(ctx context.Context) (map[string]uint64, error) {
	if v.backend == nil {
		return nil, ErrNoBackend
	}
	return v.backend.VIStats(ctx, v.handle)
}
