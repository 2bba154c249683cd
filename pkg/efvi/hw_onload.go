//go:build onload && cgo

package efvi

/*
#cgo LDFLAGS: -lciul
#include "hw_wrap.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// HardwareBuiltIn reports whether this binary has the libciul hardware
// backend (built with -tags onload and cgo).
const HardwareBuiltIn = true

// The C decoder writes the SDK's Event directly: its layout must match
// kefvi_event byte for byte (these fail to compile otherwise).
var (
	_ [unsafe.Sizeof(Event{}) - C.KEFVI_EVENT_SIZE]byte
	_ [C.KEFVI_EVENT_SIZE - unsafe.Sizeof(Event{})]byte
	_ [unsafe.Offsetof(Event{}.Bytes) - C.KEFVI_OFF_BYTES]byte
	_ [C.KEFVI_OFF_BYTES - unsafe.Offsetof(Event{}.Bytes)]byte
	_ [unsafe.Offsetof(Event{}.Addr) - C.KEFVI_OFF_ADDR]byte
	_ [C.KEFVI_OFF_ADDR - unsafe.Offsetof(Event{}.Addr)]byte
	_ [unsafe.Offsetof(Event{}.Len) - C.KEFVI_OFF_LEN]byte
	_ [C.KEFVI_OFF_LEN - unsafe.Offsetof(Event{}.Len)]byte
	_ [unsafe.Offsetof(Event{}.seq) - C.KEFVI_OFF_SEQ]byte
	_ [C.KEFVI_OFF_SEQ - unsafe.Offsetof(Event{}.seq)]byte
)

// The SDK's event, flag, subtype and discard numbers are ef_vi's: each
// pair's two differences index a one-element array, which does not compile
// unless the values are equal.
var (
	_ = [1]struct{}{}[int(EventRX)-C.EF_EVENT_TYPE_RX]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_RX-int(EventRX)]
	_ = [1]struct{}{}[int(EventTX)-C.EF_EVENT_TYPE_TX]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_TX-int(EventTX)]
	_ = [1]struct{}{}[int(EventRXDiscard)-C.EF_EVENT_TYPE_RX_DISCARD]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_RX_DISCARD-int(EventRXDiscard)]
	_ = [1]struct{}{}[int(EventTXError)-C.EF_EVENT_TYPE_TX_ERROR]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_TX_ERROR-int(EventTXError)]
	_ = [1]struct{}{}[int(EventRXNoDescTrunc)-C.EF_EVENT_TYPE_RX_NO_DESC_TRUNC]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_RX_NO_DESC_TRUNC-int(EventRXNoDescTrunc)]
	_ = [1]struct{}{}[int(EventSW)-C.EF_EVENT_TYPE_SW]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_SW-int(EventSW)]
	_ = [1]struct{}{}[int(EventOflow)-C.EF_EVENT_TYPE_OFLOW]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_OFLOW-int(EventOflow)]
	_ = [1]struct{}{}[int(EventTXWithTimestam)-C.EF_EVENT_TYPE_TX_WITH_TIMESTAMP]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_TX_WITH_TIMESTAMP-int(EventTXWithTimestam)]
	_ = [1]struct{}{}[int(EventRXMulti)-C.EF_EVENT_TYPE_RX_MULTI]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_RX_MULTI-int(EventRXMulti)]
	_ = [1]struct{}{}[int(EventReset)-C.EF_EVENT_TYPE_RESET]
	_ = [1]struct{}{}[C.EF_EVENT_TYPE_RESET-int(EventReset)]
	_ = [1]struct{}{}[int(FlagSOP)-C.EF_EVENT_FLAG_SOP]
	_ = [1]struct{}{}[C.EF_EVENT_FLAG_SOP-int(FlagSOP)]
	_ = [1]struct{}{}[int(FlagCont)-C.EF_EVENT_FLAG_CONT]
	_ = [1]struct{}{}[C.EF_EVENT_FLAG_CONT-int(FlagCont)]
	_ = [1]struct{}{}[int(FlagMulticast)-C.EF_EVENT_FLAG_MULTICAST]
	_ = [1]struct{}{}[C.EF_EVENT_FLAG_MULTICAST-int(FlagMulticast)]
	_ = [1]struct{}{}[int(DiscardCsumBad)-C.EF_EVENT_RX_DISCARD_CSUM_BAD]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_CSUM_BAD-int(DiscardCsumBad)]
	_ = [1]struct{}{}[int(DiscardMcastMismatch)-C.EF_EVENT_RX_DISCARD_MCAST_MISMATCH]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_MCAST_MISMATCH-int(DiscardMcastMismatch)]
	_ = [1]struct{}{}[int(DiscardCrcBad)-C.EF_EVENT_RX_DISCARD_CRC_BAD]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_CRC_BAD-int(DiscardCrcBad)]
	_ = [1]struct{}{}[int(DiscardTrunc)-C.EF_EVENT_RX_DISCARD_TRUNC]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_TRUNC-int(DiscardTrunc)]
	_ = [1]struct{}{}[int(DiscardRights)-C.EF_EVENT_RX_DISCARD_RIGHTS]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_RIGHTS-int(DiscardRights)]
	_ = [1]struct{}{}[int(DiscardEvError)-C.EF_EVENT_RX_DISCARD_EV_ERROR]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_EV_ERROR-int(DiscardEvError)]
	_ = [1]struct{}{}[int(DiscardOther)-C.EF_EVENT_RX_DISCARD_OTHER]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_OTHER-int(DiscardOther)]
	_ = [1]struct{}{}[int(DiscardInnerCsumBad)-C.EF_EVENT_RX_DISCARD_INNER_CSUM_BAD]
	_ = [1]struct{}{}[C.EF_EVENT_RX_DISCARD_INNER_CSUM_BAD-int(DiscardInnerCsumBad)]
	_ = [1]struct{}{}[int(TxErrorRights)-C.EF_EVENT_TX_ERROR_RIGHTS]
	_ = [1]struct{}{}[C.EF_EVENT_TX_ERROR_RIGHTS-int(TxErrorRights)]
	_ = [1]struct{}{}[int(TxErrorOflow)-C.EF_EVENT_TX_ERROR_OFLOW]
	_ = [1]struct{}{}[C.EF_EVENT_TX_ERROR_OFLOW-int(TxErrorOflow)]
	_ = [1]struct{}{}[int(TxError2Big)-C.EF_EVENT_TX_ERROR_2BIG]
	_ = [1]struct{}{}[C.EF_EVENT_TX_ERROR_2BIG-int(TxError2Big)]
	_ = [1]struct{}{}[int(TxErrorBus)-C.EF_EVENT_TX_ERROR_BUS]
	_ = [1]struct{}{}[C.EF_EVENT_TX_ERROR_BUS-int(TxErrorBus)]
	_ = [1]struct{}{}[int(DiscardL4CsumErr)-C.EF_VI_DISCARD_RX_L4_CSUM_ERR]
	_ = [1]struct{}{}[C.EF_VI_DISCARD_RX_L4_CSUM_ERR-int(DiscardL4CsumErr)]
	_ = [1]struct{}{}[int(DiscardL3CsumErr)-C.EF_VI_DISCARD_RX_L3_CSUM_ERR]
	_ = [1]struct{}{}[C.EF_VI_DISCARD_RX_L3_CSUM_ERR-int(DiscardL3CsumErr)]
	_ = [1]struct{}{}[int(DiscardEthFCSErr)-C.EF_VI_DISCARD_RX_ETH_FCS_ERR]
	_ = [1]struct{}{}[C.EF_VI_DISCARD_RX_ETH_FCS_ERR-int(DiscardEthFCSErr)]
	_ = [1]struct{}{}[int(DiscardEthLenErr)-C.EF_VI_DISCARD_RX_ETH_LEN_ERR]
	_ = [1]struct{}{}[C.EF_VI_DISCARD_RX_ETH_LEN_ERR-int(DiscardEthLenErr)]
	_ = [1]struct{}{}[int(DiscardToBeDisc)-C.EF_VI_DISCARD_RX_TOBE_DISC]
	_ = [1]struct{}{}[C.EF_VI_DISCARD_RX_TOBE_DISC-int(DiscardToBeDisc)]
	_ = [1]struct{}{}[int(DiscardInnerL4CsumErr)-C.EF_VI_DISCARD_RX_INNER_L4_CSUM_ERR]
	_ = [1]struct{}{}[C.EF_VI_DISCARD_RX_INNER_L4_CSUM_ERR-int(DiscardInnerL4CsumErr)]
	_ = [1]struct{}{}[int(DiscardInnerL3CsumErr)-C.EF_VI_DISCARD_RX_INNER_L3_CSUM_ERR]
	_ = [1]struct{}{}[C.EF_VI_DISCARD_RX_INNER_L3_CSUM_ERR-int(DiscardInnerL3CsumErr)]
)

// ErrNoNICDevice wraps the failure to open /dev/sfc_char: the node (or the
// container) has no Solarflare/AMD NIC driver device. This is where a NIC
// is needed.
var ErrNoNICDevice = errors.New("efvi: /dev/sfc_char cannot be opened (no Solarflare/AMD NIC driver here): on a node with Onload the agent mounts it into containers of hardware pools; check the device exists and that this binary's libciul matches the node's Onload release")

func errnoOf(rc C.int) error { return syscall.Errno(-rc) }

// hwBackend is the hardware backend's control plane: libciul over the
// agent's cluster (ef_pd_alloc_by_name), plus this process's own driver
// handle for the VIs. Filters belong to the agent.
type hwBackend struct {
	sel   Selection
	dh    C.ef_driver_handle
	first *C.ef_pd // allocated by DialAgent; handed to the first AllocPD
	iface string
	next  uint32
	pds   map[PDHandle]*C.ef_pd
	mems  map[MemoryHandle]*hwMem
	vis   map[VIHandle]*HardwareVI
}

type hwMem struct {
	mr  *C.ef_memreg
	pd  PDHandle
	raw []byte // the whole mapping (unmapped by FreeMemory)
	m   *Memory
}

// dialHardware opens a hardware allocation: it checks that the agent's
// cluster socket answers (in Go, allocating nothing), lets libciul do the
// cluster handshake (ef_pd_alloc_by_name: the agent passes its driver
// handle with the PD and VI set on the port), then opens this process's own
// driver handle (ef_driver_open, /dev/sfc_char) for the VIs.
func dialHardware(ctx context.Context, sel Selection) (*Driver, error) {
	if err := ClusterProbe(ctx, sel.ClusterSocket); err != nil {
		return nil, fmt.Errorf("efvi: hardware allocation (cluster %q): %w", sel.ClusterName, err)
	}
	b := &hwBackend{sel: sel, dh: -1, pds: map[PDHandle]*C.ef_pd{}, mems: map[MemoryHandle]*hwMem{}, vis: map[VIHandle]*HardwareVI{}}
	pd, err := b.allocByName(0)
	if err != nil {
		return nil, err
	}
	b.iface = C.GoString(C.ef_pd_interface_name(pd))
	var dh C.ef_driver_handle
	if rc := C.ef_driver_open(&dh); rc < 0 {
		C.ef_pd_free(pd, -1)
		C.free(unsafe.Pointer(pd))
		return nil, fmt.Errorf("efvi: the agent's cluster %q answered (PD on port %s), then ef_driver_open: %w: %w", sel.ClusterName, b.iface, errnoOf(rc), ErrNoNICDevice)
	}
	b.dh, b.first = dh, pd
	d, err := Open(b)
	if err != nil {
		b.Close()
		return nil, err
	}
	// No broker says the pod IPs on a hardware pool: they are the
	// addresses of the pod's own network namespace.
	d.info = AllocationInfo{Pool: sel.ClusterName, Interface: b.iface, Addrs: podAddrs()}
	return d, nil
}

// allocByName is ef_pd_alloc_by_name on the allocation's cluster. The PD
// needs no driver handle of ours: on the cluster path libciul uses the one
// the agent passed.
func (b *hwBackend) allocByName(flags uint32) (*C.ef_pd, error) {
	pd := (*C.ef_pd)(C.calloc(1, C.sizeof_ef_pd))
	if pd == nil {
		return nil, errors.New("efvi: out of memory for an ef_pd")
	}
	name := C.CString(b.sel.ClusterName)
	defer C.free(unsafe.Pointer(name))
	dh := b.dh
	if rc := C.ef_pd_alloc_by_name(pd, dh, name, C.enum_ef_pd_flags(flags)); rc < 0 {
		C.free(unsafe.Pointer(pd))
		err := errnoOf(rc)
		hint := ""
		if errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EBADF) {
			hint = " (libciul falls back to a local interface of that name when the agent does not know the cluster; a pod has none: is the allocation still there?)"
		}
		return nil, fmt.Errorf("efvi: ef_pd_alloc_by_name(%q) via %s: %w%s", b.sel.ClusterName, b.sel.ClusterSocket, err, hint)
	}
	return pd, nil
}

func (b *hwBackend) AllocPD(ctx context.Context, req PDRequest) (PDHandle, error) {
	if req.VLAN >= 0 {
		return 0, errors.New("vport (ef_pd_alloc_with_vport) is not available on a cluster PD: the agent chose the port; use a VLAN filter")
	}
	if req.Interface != "" && req.Interface != b.iface && req.Interface != b.sel.ClusterName {
		return 0, fmt.Errorf("interface %q: this allocation is cluster %q on port %s", req.Interface, b.sel.ClusterName, b.iface)
	}
	var pd *C.ef_pd
	if b.first != nil && req.Flags == 0 {
		pd, b.first = b.first, nil
	} else {
		var err error
		if pd, err = b.allocByName(req.Flags); err != nil {
			return 0, err
		}
	}
	b.next++
	h := PDHandle(b.next)
	b.pds[h] = pd
	return h, nil
}

// hugePage is the huge page size tried first for packet memory.
const hugePage = 2 << 20

// registerHardwareMemory maps page-aligned memory of its own (huge pages
// when the node has them free, else 4 KiB pages) and registers it with the
// PD (ef_memreg_alloc); Memory.Addr then returns real DMA addresses.
func (b *hwBackend) registerHardwareMemory(ctx context.Context, pdh PDHandle, nbufs int) (*Memory, MemoryHandle, error) {
	pd, ok := b.pds[pdh]
	if !ok {
		return nil, 0, fmt.Errorf("PD %d is not allocated in this session", pdh)
	}
	if nbufs <= 0 || nbufs > (1<<32-hugePage)/BufSize {
		return nil, 0, fmt.Errorf("%d buffers: want 1..%d", nbufs, (1<<32-hugePage)/BufSize)
	}
	size := nbufs * BufSize
	var raw []byte
	if size >= hugePage {
		// Fails (ENOMEM) when the node has no free huge pages reserved:
		// then 4 KiB pages.
		raw, _ = unix.Mmap(-1, 0, (size+hugePage-1)&^(hugePage-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_HUGETLB|unix.MAP_POPULATE)
	}
	if raw == nil {
		page := 1 << nicPageShift
		var err error
		if raw, err = unix.Mmap(-1, 0, (size+page-1)&^(page-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE); err != nil {
			return nil, 0, fmt.Errorf("map %d bytes of packet memory: %w", size, err)
		}
	}
	mr := (*C.ef_memreg)(C.calloc(1, C.sizeof_ef_memreg))
	if mr == nil {
		_ = unix.Munmap(raw)
		return nil, 0, errors.New("out of memory for an ef_memreg")
	}
	if rc := C.ef_memreg_alloc(mr, b.dh, pd, b.dh, unsafe.Pointer(&raw[0]), C.size_t(len(raw))); rc < 0 {
		C.free(unsafe.Pointer(mr))
		_ = unix.Munmap(raw)
		return nil, 0, fmt.Errorf("ef_memreg_alloc (%d bytes): %w", len(raw), errnoOf(rc))
	}
	pages := make([]uint64, len(raw)>>nicPageShift)
	copy(pages, unsafe.Slice((*uint64)(unsafe.Pointer(mr.mr_dma_addrs)), len(pages)))
	m := &Memory{b: raw[:size:size], bufSize: BufSize, nbufs: nbufs}
	m.setDMA(pages)
	b.next++
	h := MemoryHandle(b.next)
	b.mems[h] = &hwMem{mr: mr, pd: pdh, raw: raw, m: m}
	return m, h, nil
}

func (b *hwBackend) RegisterMemory(ctx context.Context, pd PDHandle, nbufs int) (MemoryGrant, error) {
	return MemoryGrant{}, errors.New("hardware memory is registered by the SDK itself (PD.RegisterMemory)")
}

func (b *hwBackend) AllocVI(ctx context.Context, pd PDHandle, mem MemoryHandle, req VIRequest) (VIGrant, error) {
	return VIGrant{}, errHardwarePD
}

// unsupportedVIFlags are ef_vi flags whose events the decoder does not
// expand (merged RX, packed stream, timestamps).
const unsupportedVIFlags = C.EF_VI_RX_EVENT_MERGE | C.EF_VI_RX_PACKED_STREAM | C.EF_VI_RX_TIMESTAMPS | C.EF_VI_TX_TIMESTAMPS

func (b *hwBackend) allocHardwareVI(ctx context.Context, pdh PDHandle, memh MemoryHandle, m *Memory, req VIRequest, opts Options) (VirtualInterface, error) {
	pd, ok := b.pds[pdh]
	if !ok {
		return nil, fmt.Errorf("PD %d is not allocated in this session", pdh)
	}
	if hm, ok := b.mems[memh]; !ok || hm.m != m {
		return nil, fmt.Errorf("memory region %d is not registered in this session", memh)
	}
	if req.Flags&unsupportedVIFlags != 0 {
		return nil, fmt.Errorf("ef_vi flags %#x: RX event merging, packed stream and timestamps are not supported by the SDK's hardware backend", req.Flags&unsupportedVIFlags)
	}
	k := C.kefvi_new()
	if k == nil {
		return nil, errors.New("out of memory for a VI")
	}
	k.dh = b.dh
	rc := C.ef_vi_alloc_from_pd(&k.vi, b.dh, pd, b.dh, C.int(req.EvqCap), C.int(req.RxqCap), C.int(req.TxqCap), nil, -1, C.enum_ef_vi_flags(req.Flags))
	if rc < 0 {
		C.kefvi_free(k)
		return nil, fmt.Errorf("ef_vi_alloc_from_pd from cluster %q's VI set: %w", b.sel.ClusterName, errnoOf(rc))
	}
	if rc := C.kefvi_rings(k); rc < 0 {
		C.ef_vi_free(&k.vi, b.dh)
		C.kefvi_free(k)
		return nil, fmt.Errorf("VI side tables: %w", errnoOf(rc))
	}
	v := &HardwareVI{k: k, b: b, pd: pd, mem: m, discards: DefaultDiscards}
	var mac [6]byte
	if rc := C.ef_vi_get_mac(&k.vi, b.dh, unsafe.Pointer(&mac[0])); rc == 0 {
		v.mac = mac
	}
	v.mtu = int(C.ef_vi_mtu(&k.vi, b.dh))
	v.instance = int(C.ef_vi_instance(&k.vi))
	v.txIDs = unsafe.Slice((*uint32)(unsafe.Pointer(k.tx_ids)), k.tx_mask+1)
	C.kefvi_set_discards(k, C.uint(v.discards))
	b.next++
	v.handle = VIHandle(b.next)
	b.vis[v.handle] = v
	return v, nil
}

// FilterAdd: on a cluster VI the filters belong to the agent (libciul's
// ef_vi_filter_add is a silent no-op there; the agent installs them on the
// VI set with ef_vi_set_filter_add, under the allocation's policy). This
// agent offers the pod no request channel for them: the pod's filters come
// from its efvi.io annotation / CNI, as for any allocation.
func (b *hwBackend) FilterAdd(ctx context.Context, vi VIHandle, spec filter.Spec) (FilterCookie, error) {
	return 0, fmt.Errorf("filter %s on hardware cluster %q: the agent installs a hardware VI's filters (from the pod's efvi.io filter annotation), not the pod: %w", spec, b.sel.ClusterName, unix.EOPNOTSUPP)
}

func (b *hwBackend) FilterDel(ctx context.Context, vi VIHandle, cookie FilterCookie) error {
	return fmt.Errorf("filter %#x on hardware cluster %q: the agent owns a hardware VI's filters: %w", uint64(cookie), b.sel.ClusterName, unix.EOPNOTSUPP)
}

func (b *hwBackend) VIStats(ctx context.Context, vi VIHandle) (map[string]uint64, error) {
	v, ok := b.vis[vi]
	if !ok {
		return nil, fmt.Errorf("VI %d is not allocated in this session", vi)
	}
	s, err := v.Stats()
	if err != nil {
		return nil, err
	}
	return map[string]uint64{"rx_nodesc": s.RxNoDesc, "rx_dropped": s.RxDropped}, nil
}

func (b *hwBackend) FreeVI(ctx context.Context, vi VIHandle) error {
	v, ok := b.vis[vi]
	if !ok {
		return nil
	}
	return v.Close()
}

func (b *hwBackend) FreeMemory(ctx context.Context, mem MemoryHandle) error {
	hm, ok := b.mems[mem]
	if !ok {
		return nil
	}
	delete(b.mems, mem)
	var err error
	if rc := C.ef_memreg_free(hm.mr, b.dh); rc < 0 {
		err = fmt.Errorf("ef_memreg_free: %w", errnoOf(rc))
	}
	C.free(unsafe.Pointer(hm.mr))
	hm.m.b, hm.m.nbufs = nil, 0
	return errors.Join(err, unix.Munmap(hm.raw))
}

func (b *hwBackend) FreePD(ctx context.Context, pd PDHandle) error {
	p, ok := b.pds[pd]
	if !ok {
		return nil
	}
	delete(b.pds, pd)
	rc := C.ef_pd_free(p, b.dh)
	C.free(unsafe.Pointer(p))
	if rc < 0 {
		return fmt.Errorf("ef_pd_free: %w", errnoOf(rc))
	}
	return nil
}

// Close frees what is left (VIs, memory, PDs: the agent sees EOF on each
// PD's cluster socket) and closes the driver handle.
func (b *hwBackend) Close() error {
	var errs []error
	for h := range b.vis {
		errs = append(errs, b.FreeVI(context.Background(), h))
	}
	for h := range b.mems {
		errs = append(errs, b.FreeMemory(context.Background(), h))
	}
	for h := range b.pds {
		errs = append(errs, b.FreePD(context.Background(), h))
	}
	if b.first != nil {
		C.ef_pd_free(b.first, b.dh)
		C.free(unsafe.Pointer(b.first))
		b.first = nil
	}
	if b.dh >= 0 {
		if rc := C.ef_driver_close(b.dh); rc < 0 {
			errs = append(errs, fmt.Errorf("ef_driver_close: %w", errnoOf(rc)))
		}
		b.dh = -1
	}
	return errors.Join(errs...)
}

// HardwareVI is a VI on a Solarflare/AMD NIC through libciul (build tag
// onload). It satisfies DataPath and VirtualInterface like the software
// VI; each call is one cgo call into small C wrappers over ef_vi's macros,
// and EventQPoll decodes up to 64 events per call straight into the
// caller's []Event. Not safe for concurrent use except EventQPut.
type HardwareVI struct {
	k        *C.kefvi
	b        *hwBackend
	pd       *C.ef_pd
	handle   VIHandle
	mem      *Memory
	mac      [6]byte
	mtu      int
	instance int
	discards DiscardMask
	txIDs    []uint32 // C memory: completed TX ids, written by the poll
	txHead   uint32   // next id TransmitUnbundle pops
	resets   uint64
	state    int
}

var _ VirtualInterface = (*HardwareVI)(nil)

// Backend is BackendHardware.
func (v *HardwareVI) Backend() BackendKind { return BackendHardware }

// Instance is ef_vi_instance.
func (v *HardwareVI) Instance() int { return v.instance }

// MAC is ef_vi_get_mac: the port's MAC.
func (v *HardwareVI) MAC() [6]byte { return v.mac }

// MTU is ef_vi_mtu.
func (v *HardwareVI) MTU() int { return v.mtu }

// Memory is the VI's registered memory region.
func (v *HardwareVI) Memory() *Memory { return v.mem }

// Capability is ef_pd_capabilities_get for one enum ef_vi_capability value
// (etherfabric/capabilities.h, e.g. EF_VI_CAP_RX_SHARED = 48 for X3's
// shared RX queues, EF_VI_CAP_CTPIO = 44).
func (v *HardwareVI) Capability(c int) (uint64, error) {
	var val C.ulong
	if rc := C.ef_pd_capabilities_get(v.b.dh, v.pd, v.b.dh, C.enum_ef_vi_capability(c), &val); rc < 0 {
		return 0, fmt.Errorf("capability %d: %w", c, errnoOf(rc))
	}
	return uint64(val), nil
}

func (v *HardwareVI) live() error {
	switch v.state {
	case stateOK:
		return nil
	case stateClosed:
		return ErrClosed
	}
	return ErrReset
}

func errOf(rc C.int) error {
	if rc == -C.EAGAIN {
		return ErrAgain
	}
	return fmt.Errorf("efvi: %w", errnoOf(rc))
}

// ReceiveInit posts buffer addr (an ef_addr of the VI's memory) with id
// (ef_vi_receive_init); ErrAgain when the ring is full.
func (v *HardwareVI) ReceiveInit(addr Addr, id RqID) error {
	if err := v.live(); err != nil {
		return err
	}
	off, ok := v.mem.Offset(addr)
	if !ok {
		return errBadRxAddr
	}
	if rc := C.kefvi_rx_init(v.k, C.uint64_t(addr), C.uint32_t(id), C.uint32_t(off)); rc < 0 {
		return errOf(rc)
	}
	return nil
}

// ReceivePush is ef_vi_receive_push (EF10 pushes in multiples of 8).
func (v *HardwareVI) ReceivePush() {
	if v.state == stateOK {
		C.kefvi_rx_push(v.k)
	}
}

// ReceivePost is ReceiveInit + ReceivePush.
func (v *HardwareVI) ReceivePost(addr Addr, id RqID) error {
	if err := v.ReceiveInit(addr, id); err != nil {
		return err
	}
	v.ReceivePush()
	return nil
}

// ReceiveSpace is ef_vi_receive_space.
func (v *HardwareVI) ReceiveSpace() int {
	if v.state == stateClosed {
		return 0
	}
	return int(C.kefvi_rx_space(v.k))
}

// ReceiveFillLevel is ef_vi_receive_fill_level.
func (v *HardwareVI) ReceiveFillLevel() int { return int(C.kefvi_rx_fill(v.k)) }

// ReceiveCapacity is ef_vi_receive_capacity (the ring mask: a 512 ring
// holds 511).
func (v *HardwareVI) ReceiveCapacity() int { return int(C.kefvi_rx_cap(v.k)) }

// ReceivePrefixLen is ef_vi_receive_prefix_len. Event.Addr, Event.Bytes
// and RxFrame already skip the prefix.
func (v *HardwareVI) ReceivePrefixLen() int { return int(v.k.prefix) }

// ReceiveBufferLen is the largest frame (without prefix) one buffer takes.
func (v *HardwareVI) ReceiveBufferLen() int { return int(C.kefvi_rx_buflen(v.k)) - int(v.k.prefix) }

// ReceiveSetDiscards is ef_vi_receive_set_discards; it returns the
// previous mask.
func (v *HardwareVI) ReceiveSetDiscards(mask DiscardMask) DiscardMask {
	old := v.discards
	if C.kefvi_set_discards(v.k, C.uint(mask)) == 0 {
		v.discards = mask
	}
	return old
}

// RxFrame returns the data of an RX or RX_DISCARD event (without the RX
// prefix), a slice of the VI's memory valid until the buffer is re-posted.
func (v *HardwareVI) RxFrame(ev *Event) []byte {
	if ev.Type != EventRX && ev.Type != EventRXDiscard {
		return nil
	}
	end := uint64(ev.seq) + uint64(ev.Len)
	if end > uint64(len(v.mem.b)) {
		return nil
	}
	return v.mem.b[ev.seq:end:end]
}

// TransmitInit is ef_vi_transmit_init; ErrAgain when the ring is full or
// TransmitBatch... completions wait to be unbundled.
func (v *HardwareVI) TransmitInit(addr Addr, length int, id RqID) error {
	if err := v.live(); err != nil {
		return err
	}
	if uint32(v.k.tx_posted)-v.txHead > uint32(v.k.tx_mask) {
		return ErrAgain
	}
	if rc := C.kefvi_tx_init(v.k, C.uint64_t(addr), C.int(length), C.uint32_t(id)); rc < 0 {
		return errOf(rc)
	}
	return nil
}

// TransmitPush is ef_vi_transmit_push.
func (v *HardwareVI) TransmitPush() {
	if v.state == stateOK {
		C.kefvi_tx_push(v.k)
	}
}

// Transmit is ef_vi_transmit (init + push in one call).
func (v *HardwareVI) Transmit(addr Addr, length int, id RqID) error {
	if err := v.live(); err != nil {
		return err
	}
	if uint32(v.k.tx_posted)-v.txHead > uint32(v.k.tx_mask) {
		return ErrAgain
	}
	if rc := C.kefvi_tx(v.k, C.uint64_t(addr), C.int(length), C.uint32_t(id)); rc < 0 {
		return errOf(rc)
	}
	return nil
}

// TransmitUnbundle writes the ids a TX or TX_ERROR event completes into
// ids (ef_vi_transmit_unbundle, done already by the poll), in submission
// order, and returns how many; no cgo call.
func (v *HardwareVI) TransmitUnbundle(ev *Event, ids []RqID) int {
	if ev.Type != EventTX && ev.Type != EventTXError {
		return 0
	}
	n := 0
	for n < len(ids) && v.txHead != uint32(v.k.tx_done) && int32(ev.seq-v.txHead) > 0 {
		ids[n] = RqID(v.txIDs[v.txHead&uint32(v.k.tx_mask)])
		v.txHead++
		n++
	}
	return n
}

// TransmitSpace is ef_vi_transmit_space, bounded by completions not yet
// unbundled.
func (v *HardwareVI) TransmitSpace() int {
	if v.state == stateClosed {
		return 0
	}
	fifo := int(v.k.tx_mask+1) - int(uint32(v.k.tx_posted)-v.txHead)
	return min(int(C.kefvi_tx_space(v.k)), fifo)
}

// TransmitFillLevel is the number of descriptors posted and not yet
// unbundled.
func (v *HardwareVI) TransmitFillLevel() int { return int(uint32(v.k.tx_posted) - v.txHead) }

// TransmitCapacity is ef_vi_transmit_capacity.
func (v *HardwareVI) TransmitCapacity() int { return int(C.kefvi_tx_cap(v.k)) }

// EventQPoll is ef_eventq_poll: one cgo call decodes up to 64 events into
// evs (which needs at least 2 entries, as in ef_vi), with no allocation.
func (v *HardwareVI) EventQPoll(evs []Event) int {
	if v.state != stateOK || len(evs) < 2 {
		return 0
	}
	n := int(C.kefvi_poll(v.k, (*C.kefvi_event)(unsafe.Pointer(&evs[0])), C.int(min(len(evs), C.KEFVI_POLL_MAX))))
	if r := uint64(v.k.c.resets); r != v.resets {
		v.resets = r
		v.state = stateDead
	}
	return n
}

// EventQHasEvent is ef_eventq_has_event.
func (v *HardwareVI) EventQHasEvent() bool {
	return v.state == stateOK && C.kefvi_has_event(v.k) != 0
}

// EventQCapacity is ef_eventq_capacity.
func (v *HardwareVI) EventQCapacity() int { return int(C.kefvi_evq_cap(v.k)) }

// EventQPut is ef_eventq_put: a SW event through the driver; any goroutine
// may call it.
func (v *HardwareVI) EventQPut(data uint16) error {
	if rc := C.kefvi_put(v.k, C.uint(data)); rc < 0 {
		return fmt.Errorf("efvi: ef_eventq_put: %w", errnoOf(rc))
	}
	return nil
}

// Prime is ef_vi_prime: the driver handle becomes readable at the next
// event.
func (v *HardwareVI) Prime() error {
	if err := v.live(); err != nil {
		return err
	}
	if rc := C.kefvi_prime(v.k); rc < 0 {
		return fmt.Errorf("efvi: ef_vi_prime: %w", errnoOf(rc))
	}
	return nil
}

// Wait blocks until an event is ready (prime, then poll(2) on the driver
// handle); timeout < 0 waits for ever.
func (v *HardwareVI) Wait(timeout time.Duration) error {
	return v.wait(context.Background(), timeout)
}

// WaitContext is Wait bounded by ctx.
func (v *HardwareVI) WaitContext(ctx context.Context) error {
	timeout := time.Duration(-1)
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	err := v.wait(ctx, timeout)
	if errors.Is(err, ErrTimeout) && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (v *HardwareVI) wait(ctx context.Context, timeout time.Duration) error {
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		if v.EventQHasEvent() {
			return nil
		}
		if err := v.live(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		slice := liveProbe // re-check ctx this often
		if timeout >= 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return ErrTimeout
			}
			slice = min(slice, left)
		}
		if err := v.Prime(); err != nil {
			return err
		}
		if v.EventQHasEvent() {
			return nil
		}
		fds := [1]unix.PollFd{{Fd: int32(v.b.dh), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds[:], max(int(slice/time.Millisecond), 1)); err != nil && err != unix.EINTR {
			return fmt.Errorf("efvi wait: poll on the driver handle: %w", err)
		}
	}
}

// Stats reads ef_vi_stats_query (EF10: RX no-descriptor, CRC, truncation,
// abort errors) and the SDK's decoder counters.
func (v *HardwareVI) Stats() (Stats, error) {
	if v.state == stateClosed {
		return Stats{}, ErrClosed
	}
	c := v.k.c
	s := Stats{
		RxEvents:       uint64(c.rx_events),
		RxDiscardCsum:  uint64(c.rx_discard_csum),
		RxDiscardTrunc: uint64(c.rx_discard_trunc),
		TxCompleted:    uint64(c.tx_completed),
		TxErrors:       uint64(c.tx_errors),
		SWEvents:       uint64(c.sw_events),
		Oflows:         uint64(c.oflows),
	}
	var out [4]C.uint64_t
	if rc := C.kefvi_stats(v.k, &out[0]); rc < 0 {
		return s, fmt.Errorf("efvi stats: ef_vi_stats_query: %w", errnoOf(rc))
	}
	s.RxNoDesc = uint64(out[0])
	s.RxDropped = uint64(out[1] + out[2] + out[3])
	return s, nil
}

// RefillFrom posts free buffers from p until the RX ring is full or p is
// empty, 64 per cgo call, then pushes; it returns how many it posted.
func (v *HardwareVI) RefillFrom(p *BufPool) int {
	if v.state != stateOK {
		return 0
	}
	space := v.ReceiveSpace()
	total := 0
	for total < space && p.Len() > 0 {
		n := 0
		for n < C.KEFVI_REFILL_MAX && total+n < space {
			i, ok := p.Get()
			if !ok {
				break
			}
			off := uint64(i) * uint64(v.mem.bufSize)
			v.k.refill_addr[n] = C.uint64_t(v.mem.Addr(i))
			v.k.refill_off[n] = C.uint32_t(off)
			v.k.refill_id[n] = C.uint32_t(i)
			n++
		}
		posted := int(C.kefvi_refill(v.k, C.int(n)))
		for j := posted; j < n; j++ {
			p.Put(int(v.k.refill_id[j]))
		}
		total += posted
		if posted < n {
			break
		}
	}
	return total
}

// FilterAdd asks the backend; on hardware the agent owns the filters
// (EOPNOTSUPP, saying so).
func (v *HardwareVI) FilterAdd(ctx context.Context, spec filter.Spec) (FilterCookie, error) {
	c, err := v.b.FilterAdd(ctx, v.handle, spec)
	if err != nil {
		return 0, fmt.Errorf("filter add: %w", err)
	}
	return c, nil
}

// FilterDel: see FilterAdd.
func (v *HardwareVI) FilterDel(ctx context.Context, cookie FilterCookie) error {
	if err := v.b.FilterDel(ctx, v.handle, cookie); err != nil {
		return fmt.Errorf("filter del: %w", err)
	}
	return nil
}

// Close frees the VI (ef_vi_free). Its memory stays registered.
func (v *HardwareVI) Close() error {
	if v.state == stateClosed {
		return nil
	}
	v.state = stateClosed
	var err error
	if v.b != nil {
		delete(v.b.vis, v.handle)
		if rc := C.ef_vi_free(&v.k.vi, v.b.dh); rc < 0 {
			err = fmt.Errorf("ef_vi_free: %w", errnoOf(rc))
		}
	}
	C.kefvi_free(v.k)
	v.k = nil
	return err
}

// newBenchHardwareVI is a HardwareVI over an EF10 event queue in host
// memory with no event in it and no rings (kefvi_bench_vi): for measuring
// the wrapper cost per poll, and testing the poll path, without a NIC.
func newBenchHardwareVI() (*HardwareVI, func(), error) {
	k := C.kefvi_new()
	if k == nil {
		return nil, nil, errors.New("out of memory")
	}
	var st, ring unsafe.Pointer
	if rc := C.kefvi_bench_vi(k, &st, &ring); rc < 0 {
		C.kefvi_free(k)
		return nil, nil, fmt.Errorf("ef_vi_init (EF10, host memory): %w", errnoOf(rc))
	}
	v := &HardwareVI{k: k, mem: &Memory{}}
	return v, func() {
		C.free(st)
		C.free(ring)
		C.kefvi_free(k)
	}, nil
}

// benchHasEvent is one bare wrapper call (ef_eventq_has_event).
func benchHasEvent(v *HardwareVI) bool { return C.kefvi_has_event(v.k) != 0 }

// podAddrs lists the global unicast addresses of this network namespace's
// interfaces. On a hardware pool, where no broker says them, these are the
// pod's IPs: the destinations the agent steers to the pod's VIs.
func podAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		p, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(p.IP)
		if ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out
}
