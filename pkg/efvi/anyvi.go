package efvi

import (
	"context"
	"errors"
	"fmt"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// VirtualInterface is a VI of either backend: the data path plus what a
// program asks of a VI besides packets. *VI (software) and, in a binary
// built with -tags onload, *HardwareVI satisfy it; PD.AllocVirtualInterface
// returns whichever the allocation is on, so the same program runs on a
// software and a hardware pool.
type VirtualInterface interface {
	DataPath
	// Backend says which backend the VI is on.
	Backend() BackendKind
	Instance() int
	MAC() [6]byte
	MTU() int
	Memory() *Memory
	ReceivePrefixLen() int
	ReceiveBufferLen() int
	EventQCapacity() int
	RefillFrom(p *BufPool) int
	WaitContext(ctx context.Context) error
	FilterAdd(ctx context.Context, spec filter.Spec) (FilterCookie, error)
	FilterDel(ctx context.Context, cookie FilterCookie) error
}

var _ VirtualInterface = (*VI)(nil)

// Backend is BackendSoftware for a software VI.
func (v *VI) Backend() BackendKind { return BackendSoftware }

// hardwareBackend is what the hardware (libciul) backend adds to Backend:
// it registers memory the SDK allocated itself and allocates its own VI
// type. Only the onload-tagged build has an implementation.
type hardwareBackend interface {
	Backend
	registerHardwareMemory(ctx context.Context, pd PDHandle, nbufs int) (*Memory, MemoryHandle, error)
	allocHardwareVI(ctx context.Context, pd PDHandle, mem MemoryHandle, m *Memory, req VIRequest, opts Options) (VirtualInterface, error)
}

// errHardwarePD is PD.AllocVI's answer on a hardware PD.
var errHardwarePD = errors.New("alloc VI: this PD is on a hardware pool, whose VIs are not software VIs: use PD.AllocVirtualInterface, which returns either backend's VI")

// AllocVirtualInterface allocates a VI over mem on whichever backend the PD
// is on (ef_vi_alloc_from_pd): a software *VI or a *HardwareVI.
func (pd *PD) AllocVirtualInterface(ctx context.Context, mem *RegisteredMemory, req VIRequest, opts Options) (VirtualInterface, error) {
	hb, ok := pd.d.b.(hardwareBackend)
	if !ok {
		return pd.AllocVI(ctx, mem, req, opts)
	}
	v, err := hb.allocHardwareVI(ctx, pd.handle, mem.handle, mem.Memory, req, opts)
	if err != nil {
		return nil, fmt.Errorf("alloc VI: %w", err)
	}
	return v, nil
}

// Backend says which backend the Driver is on.
func (d *Driver) Backend() BackendKind {
	if _, ok := d.b.(hardwareBackend); ok {
		return BackendHardware
	}
	return BackendSoftware
}
