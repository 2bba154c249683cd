package efvi

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
)

// Options tune a software VI. The zero value gives the defaults.
type Options struct {
	// IdleKickAfter is the polling policy: once EventQPoll has found
	// nothing for this long, the VI pushes pending fill entries, does the
	// recvfrom kick (it doubles as the liveness probe that detects RESET),
	// re-kicks TX if needed and reads XDP_STATISTICS (for OFLOW), then
	// again every IdleKickAfter while idle. A busy loop never pays for it.
	// The clock is read once per idleClockPolls empty polls. 0 = 100 µs;
	// negative disables idle kicks (then RESET and OFLOW are only seen by
	// Wait and Stats).
	IdleKickAfter time.Duration
	// SWQueueSize bounds pending SW events (power of two; 0 = 256).
	SWQueueSize uint32
	// Instance is reported as the event queue id (Event.Q) and by
	// Instance(); MAC and MTU by MAC() and MTU().
	Instance uint16
	MAC      [6]byte
	MTU      int
}

// Stats are a VI's counters: the kernel's XDP_STATISTICS plus the SDK's.
type Stats struct {
	// Kernel (XDP_STATISTICS).
	RxNoDesc       uint64 // frames dropped because no RX buffer was posted (rx_fill_ring_empty_descs)
	RxRingFull     uint64 // frames dropped because the event queue (RX ring) was full
	RxDropped      uint64 // other kernel drops (e.g. frame larger than a buffer)
	RxInvalidDescs uint64
	TxInvalidDescs uint64
	TxRingEmpty    uint64
	// SDK.
	RxEvents       uint64
	RxDiscardCsum  uint64
	RxDiscardTrunc uint64
	TxCompleted    uint64
	TxErrors       uint64
	SWEvents       uint64
	Oflows         uint64
	TxKicks        uint64
	TxKickRetries  uint64 // kicks answered EAGAIN/EBUSY/ENOBUFS (retried)
	RxKicks        uint64
	IdleKicks      uint64
	NetDown        uint64 // kicks answered ENETDOWN (device down, not gone)
}

const (
	stateOK = iota
	stateResetPending
	stateDead
	stateClosed
)

const txBad = 1 << 31

type txEntry struct {
	id    RqID
	chunk uint32 // or txBad|TxErrorType
}

// VI is a software virtual interface: an AF_XDP socket whose RX and
// completion rings are merged into one ef_vi-style event queue, whose fill
// ring is the RX descriptor ring and whose TX ring is the TX descriptor
// ring. Like ef_vi it is not safe for concurrent use, except EventQPut,
// which any goroutine may call.
type VI struct {
	r        *xsk.Rings
	fd       int
	xskFile  *os.File
	mem      *Memory
	ownMem   bool
	umem     []byte
	umemSize uint64
	shift    uint32
	nframes  uint32
	rxOff    int
	opts     Options
	state    int

	// RX
	hasRx    bool
	rxIDs    []RqID
	rxAdded  uint32
	rxDone   uint32
	rxCont   bool
	rxCum    uint32
	discards DiscardMask

	// TX: FIFO of submitted descriptors, in submission order.
	hasTx   bool
	txFifo  []txEntry
	txMask  uint32
	txHead  uint32 // next to unbundle
	txScan  uint32 // next whose completion is not yet reported
	txTail  uint32 // next free
	txDone  []uint16
	txKick  bool // kick again on the next poll (EAGAIN/EBUSY/ENOBUFS)
	txKickI bool // kick again on the next idle kick (ENETDOWN)

	// events
	sw           *swQueue
	evfd         int
	waiting      atomic.Uint32
	idle         uint32        // empty polls since the last event
	idleSince    time.Duration // since epoch, when idleness was first seen (0 = not yet)
	epoch        time.Time
	lastRingFull uint64
	oflow        bool
	kst          xsk.Stats
	st           Stats

	backend Backend
	handle  VIHandle
}

// NewSoftwareVIFromFDs builds a VI from an AF_XDP socket fd and the memfd of
// its UMEM, as handed over by the agent, with the socket's Geometry. The VI
// takes ownership of both fds (Close closes them) and maps the memory
// itself (Memory()).
func NewSoftwareVIFromFDs(xskFD, memFD int, g xsk.Geometry, opts Options) (*VI, error) {
	if err := g.Validate(); err != nil {
		return nil, fmt.Errorf("new software VI: %w", err)
	}
	memFile := os.NewFile(uintptr(memFD), "efvi-memory")
	mem, err := MapMemory(memFile, int(g.NumFrames), int(g.FrameSize))
	if err != nil {
		memFile.Close()
		unix.Close(xskFD)
		return nil, fmt.Errorf("new software VI: %w", err)
	}
	v, err := NewSoftwareVI(xskFD, mem, g, opts)
	if err != nil {
		mem.Close()
		return nil, err
	}
	v.ownMem = true
	return v, nil
}

// NewSoftwareVI builds a VI from an AF_XDP socket fd bound with Geometry g
// whose UMEM is mem (which must match g). The VI takes ownership of xskFD;
// mem stays the caller's (close it after the VI). On error xskFD is closed.
func NewSoftwareVI(xskFD int, mem *Memory, g xsk.Geometry, opts Options) (*VI, error) {
	fail := func(err error) (*VI, error) {
		unix.Close(xskFD)
		return nil, fmt.Errorf("new software VI: %w", err)
	}
	if err := g.Validate(); err != nil {
		return fail(err)
	}
	if mem == nil || mem.BufSize() != int(g.FrameSize) || mem.NumBufs() != int(g.NumFrames) {
		return fail(fmt.Errorf("memory region does not match the socket geometry (%d x %d bytes)", g.NumFrames, g.FrameSize))
	}
	if opts.IdleKickAfter == 0 {
		opts.IdleKickAfter = DefaultIdleKickAfter
	}
	if opts.SWQueueSize == 0 {
		opts.SWQueueSize = 256
	}
	if opts.SWQueueSize&(opts.SWQueueSize-1) != 0 {
		return fail(fmt.Errorf("SWQueueSize %d is not a power of two", opts.SWQueueSize))
	}
	r, err := xsk.Map(xskFD, -1, g)
	if err != nil {
		return fail(err)
	}
	r.UMEM = mem.Bytes()
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		r.Close()
		return fail(fmt.Errorf("eventfd: %w", err))
	}
	v := &VI{
		r:        r,
		fd:       xskFD,
		xskFile:  os.NewFile(uintptr(xskFD), "efvi-xsk"),
		mem:      mem,
		umem:     mem.Bytes(),
		umemSize: uint64(len(mem.Bytes())),
		shift:    uint32(bits.TrailingZeros32(g.FrameSize)),
		nframes:  g.NumFrames,
		rxOff:    unix.XDP_PACKET_HEADROOM + int(g.Headroom),
		opts:     opts,
		hasRx:    g.RxSize > 0,
		rxIDs:    make([]RqID, g.NumFrames),
		discards: DefaultDiscards,
		hasTx:    g.TxSize > 0,
		txDone:   make([]uint16, g.NumFrames),
		sw:       newSWQueue(opts.SWQueueSize),
		epoch:    time.Now(),
		evfd:     evfd,
	}
	if v.hasTx {
		v.txFifo = make([]txEntry, g.TxSize)
		v.txMask = g.TxSize - 1
	}
	return v, nil
}

// Memory is the VI's memory region.
func (v *VI) Memory() *Memory { return v.mem }

// FD is the AF_XDP socket (for epoll integration; Wait does poll for you).
func (v *VI) FD() int { return v.fd }

// Instance is ef_vi_instance: the queue id reported in events.
func (v *VI) Instance() int { return int(v.opts.Instance) }

// MAC is ef_vi_get_mac: the MAC address frames from this VI should carry.
func (v *VI) MAC() [6]byte { return v.opts.MAC }

// MTU is ef_vi_mtu.
func (v *VI) MTU() int { return v.opts.MTU }

func (v *VI) stateErr() error {
	if v.state == stateClosed {
		return ErrClosed
	}
	return ErrReset
}

// ---- receive ----

// ReceiveInit adds buffer addr with id to the RX descriptor (fill) ring
// without telling the kernel (ef_vi_receive_init). It returns ErrAgain when
// the ring is full. The kernel writes the frame at the start of addr's
// 2 KiB buffer + RxFrameOffset(), whatever the offset of addr in it.
func (v *VI) ReceiveInit(addr Addr, id RqID) error {
	if v.state != stateOK {
		return v.stateErr()
	}
	if uint64(addr) >= v.umemSize {
		return errBadRxAddr
	}
	idx, ok := v.r.Fill.Reserve(1)
	if !ok {
		return ErrAgain
	}
	v.r.Fill.Set(idx, uint64(addr))
	v.rxIDs[uint64(addr)>>v.shift] = id
	v.rxAdded++
	return nil
}

var errBadRxAddr = fmt.Errorf("efvi: receive buffer address outside the VI's memory region: %w", unix.EINVAL)

// ReceivePush hands every initialised RX buffer to the kernel
// (ef_vi_receive_push); it kicks only if the kernel asked for it.
func (v *VI) ReceivePush() {
	if v.state != stateOK {
		return
	}
	v.r.Fill.Submit()
	if v.r.Fill.NeedWakeup() {
		v.kickRX()
	}
}

// ReceivePost is ReceiveInit + ReceivePush.
func (v *VI) ReceivePost(addr Addr, id RqID) error {
	if err := v.ReceiveInit(addr, id); err != nil {
		return err
	}
	v.ReceivePush()
	return nil
}

// ReceiveSpace is how many more buffers ReceiveInit accepts now.
func (v *VI) ReceiveSpace() int {
	if v.state == stateClosed {
		return 0
	}
	return int(v.r.Fill.Free(v.r.Fill.Size()))
}

// ReceiveFillLevel is the number of posted buffers not yet returned in an
// RX or RX_DISCARD event.
func (v *VI) ReceiveFillLevel() int { return int(v.rxAdded - v.rxDone) }

// ReceiveCapacity is the RX descriptor (fill) ring size.
func (v *VI) ReceiveCapacity() int { return int(v.r.Fill.Size()) }

// ReceivePrefixLen is ef_vi_receive_prefix_len: always 0 here. Frames do
// not start at the posted address: use RxFrame(ev) or Event.Addr.
func (v *VI) ReceivePrefixLen() int { return 0 }

// RxFrameOffset is where in a buffer the kernel writes a received frame:
// XDP_PACKET_HEADROOM (256) + the UMEM headroom.
func (v *VI) RxFrameOffset() int { return v.rxOff }

// ReceiveBufferLen is the largest frame one buffer receives.
func (v *VI) ReceiveBufferLen() int { return int(1<<v.shift) - v.rxOff }

// ReceiveSetDiscards sets which errors make RX_DISCARD events
// (ef_vi_receive_set_discards) and returns the previous mask.
func (v *VI) ReceiveSetDiscards(mask DiscardMask) DiscardMask {
	old := v.discards
	v.discards = mask
	return old
}

// RxFrame returns the received data of an RX or RX_DISCARD event: a slice
// into the VI's memory (no copy), valid until the buffer is re-posted.
func (v *VI) RxFrame(ev *Event) []byte {
	end := uint64(ev.Addr) + uint64(ev.Len)
	if end > v.umemSize {
		return nil
	}
	return v.umem[ev.Addr:end:end]
}

// ---- transmit ----

// TransmitInit queues the frame at addr (length bytes) with id without
// telling the kernel (ef_vi_transmit_init). ErrAgain when the ring is full.
// A descriptor the kernel would reject is not posted: it is reported, in
// submission order, as a TX_ERROR event carrying id (TxErrorRights: addr is
// outside the memory region; TxError2Big: length is 0 or the frame would
// cross the end of its 2 KiB buffer).
func (v *VI) TransmitInit(addr Addr, length int, id RqID) error {
	if v.state != stateOK {
		return v.stateErr()
	}
	if !v.hasTx {
		return ErrNoRing
	}
	if v.txTail-v.txHead > v.txMask {
		return ErrAgain
	}
	e := &v.txFifo[v.txTail&v.txMask]
	e.id = id
	switch {
	case uint64(addr) >= v.umemSize:
		e.chunk = txBad | uint32(TxErrorRights)
	case length <= 0 || uint64(addr)&(1<<v.shift-1)+uint64(length) > 1<<v.shift:
		e.chunk = txBad | uint32(TxError2Big)
	default:
		idx, ok := v.r.Tx.Reserve(1)
		if !ok {
			return ErrAgain
		}
		v.r.Tx.Set(idx, uint64(addr), uint32(length), 0)
		e.chunk = uint32(uint64(addr) >> v.shift)
	}
	v.txTail++
	return nil
}

// TransmitPush hands queued frames to the kernel (ef_vi_transmit_push):
// one sendto kick per batch when the kernel wants one (copy mode always
// does).
func (v *VI) TransmitPush() {
	if v.state != stateOK || !v.hasTx {
		return
	}
	if v.r.Tx.Pending() == 0 && !v.txKick {
		return
	}
	v.r.Tx.Submit()
	if v.r.Tx.NeedWakeup() {
		v.kickTX()
	}
}

// Transmit is TransmitInit + TransmitPush.
func (v *VI) Transmit(addr Addr, length int, id RqID) error {
	if err := v.TransmitInit(addr, length, id); err != nil {
		return err
	}
	v.TransmitPush()
	return nil
}

// TransmitUnbundle writes the ids of the descriptors a TX or TX_ERROR event
// completes into ids, in submission order, and returns how many
// (ef_vi_transmit_unbundle). Give it TransmitBatch slots; if ids is
// shorter, the rest come out of the next call.
func (v *VI) TransmitUnbundle(ev *Event, ids []RqID) int {
	if ev.Type != EventTX && ev.Type != EventTXError {
		return 0
	}
	n := 0
	for n < len(ids) && v.txHead != v.txScan && int32(ev.seq-v.txHead) > 0 {
		ids[n] = v.txFifo[v.txHead&v.txMask].id
		v.txHead++
		n++
	}
	return n
}

// TransmitSpace is how many more descriptors TransmitInit accepts.
func (v *VI) TransmitSpace() int {
	if !v.hasTx || v.state == stateClosed {
		return 0
	}
	fifo := v.txMask + 1 - (v.txTail - v.txHead)
	ring := v.r.Tx.Free(v.r.Tx.Size())
	return int(min(fifo, ring))
}

// TransmitFillLevel is the number of descriptors posted and not yet
// unbundled.
func (v *VI) TransmitFillLevel() int { return int(v.txTail - v.txHead) }

// TransmitCapacity is the TX ring size.
func (v *VI) TransmitCapacity() int {
	if !v.hasTx {
		return 0
	}
	return int(v.txMask + 1)
}

// ---- events ----

// EventQCapacity is the number of events the kernel can queue (RX ring +
// completion ring).
func (v *VI) EventQCapacity() int { return int(v.r.Rx.Size() + v.r.Comp.Size()) }

// DefaultIdleKickAfter is Options.IdleKickAfter's default.
const DefaultIdleKickAfter = 100 * time.Microsecond

// idleClockPolls is how many empty polls pass between two clock reads of
// the idle-kick policy (a power of two).
const idleClockPolls = 64

// EventQPoll fills evs with up to len(evs) events and returns how many
// (ef_eventq_poll). It makes no allocation and no system call other than
// kicks the polling policy (Options.IdleKickAfter) calls for.
func (v *VI) EventQPoll(evs []Event) int {
	if v.state != stateOK {
		if v.state == stateResetPending && len(evs) > 0 {
			evs[0] = Event{Type: EventReset, Q: v.opts.Instance}
			v.state = stateDead
			return 1
		}
		return 0
	}
	n := 0
	if v.oflow && n < len(evs) {
		evs[n] = Event{Type: EventOflow, Q: v.opts.Instance}
		n++
		v.oflow = false
		v.st.Oflows++
	}
	for n < len(evs) && v.sw.ready() {
		d, _ := v.sw.get()
		evs[n] = Event{Type: EventSW, Sub: d, Q: v.opts.Instance}
		n++
		v.st.SWEvents++
	}
	if v.txTail != v.txScan {
		if v.txKick {
			v.kickTX()
		}
		n = v.pollTX(evs, n)
	}
	if v.hasRx && n < len(evs) {
		n = v.pollRX(evs, n)
	}
	if n != 0 {
		v.idle, v.idleSince = 0, 0
		return n
	}
	if v.opts.IdleKickAfter > 0 && v.idleDue() {
		v.idleKick()
		if v.state == stateResetPending && len(evs) > 0 {
			return v.EventQPoll(evs)
		}
	}
	return 0
}

// idleDue counts an empty poll and reports whether the VI has been idle
// for IdleKickAfter (restarting the period when it has). It reads the
// monotonic clock once per idleClockPolls calls.
func (v *VI) idleDue() bool {
	v.idle++
	if v.idle%idleClockPolls != 0 {
		return false
	}
	now := time.Since(v.epoch) + 1 // never 0
	if v.idleSince == 0 {
		v.idleSince = now
		return false
	}
	if now-v.idleSince < v.opts.IdleKickAfter {
		return false
	}
	v.idleSince = now
	return true
}

func (v *VI) pollTX(evs []Event, n int) int {
	if idx, k := v.r.Comp.Peek(v.r.Comp.Size()); k > 0 {
		for i := uint32(0); i < k; i++ {
			if c := v.r.Comp.Get(idx+i) >> v.shift; c < uint64(v.nframes) {
				v.txDone[c]++
			}
		}
		v.r.Comp.Release(k)
	}
	cnt := uint16(0)
	for v.txScan != v.txTail && n < len(evs) {
		e := &v.txFifo[v.txScan&v.txMask]
		if e.chunk&txBad != 0 {
			if cnt > 0 {
				evs[n] = Event{Type: EventTX, Q: v.opts.Instance, Count: cnt, seq: v.txScan}
				n++
				cnt = 0
				if n == len(evs) {
					break
				}
			}
			v.txScan++
			evs[n] = Event{Type: EventTXError, Q: v.opts.Instance, Sub: uint16(e.chunk &^ txBad), RqID: e.id, Count: 1, seq: v.txScan}
			n++
			v.st.TxErrors++
			continue
		}
		if v.txDone[e.chunk] == 0 {
			break
		}
		v.txDone[e.chunk]--
		v.txScan++
		v.st.TxCompleted++
		cnt++
		if cnt == TransmitBatch {
			evs[n] = Event{Type: EventTX, Q: v.opts.Instance, Count: cnt, seq: v.txScan}
			n++
			cnt = 0
		}
	}
	if cnt > 0 {
		evs[n] = Event{Type: EventTX, Q: v.opts.Instance, Count: cnt, seq: v.txScan}
		n++
	}
	return n
}

func (v *VI) pollRX(evs []Event, n int) int {
	idx, k := v.r.Rx.Peek(uint32(len(evs) - n))
	if k == 0 {
		return n
	}
	for i := uint32(0); i < k; i++ {
		d := v.r.Rx.Get(idx + i)
		ev := &evs[n]
		n++
		*ev = Event{Type: EventRX, Q: v.opts.Instance, Addr: Addr(d.Addr), Len: uint16(d.Len)}
		if c := d.Addr >> v.shift; c < uint64(v.nframes) {
			ev.RqID = v.rxIDs[c]
		}
		var flags uint16
		if !v.rxCont {
			flags = FlagSOP
			v.rxCum = 0
		}
		v.rxCum += d.Len
		ev.Bytes = v.rxCum
		v.rxCont = d.Options&unix.XDP_PKT_CONTD != 0
		if v.rxCont {
			flags |= FlagCont
		}
		end := d.Addr + uint64(d.Len)
		if end > v.umemSize || d.Len == 0 {
			ev.Type, ev.Sub = EventRXDiscard, uint16(DiscardOther)
			ev.Flags = flags
			continue
		}
		f := v.umem[d.Addr:end]
		if f[0]&1 != 0 {
			flags |= FlagMulticast
		}
		ev.Flags = flags
		if flags&(FlagSOP|FlagCont) == FlagSOP && v.discards&(DiscardL3CsumErr|DiscardL4CsumErr|DiscardEthLenErr) != 0 {
			if dt, bad := v.check(f); bad {
				ev.Type, ev.Sub = EventRXDiscard, uint16(dt)
			}
		}
	}
	v.r.Rx.Release(k)
	v.rxDone += k
	v.st.RxEvents += uint64(k)
	return n
}

// check applies the discard mask to a complete single-buffer frame: the
// inline IPv4 check for the common case, else the generic parser.
func (v *VI) check(b []byte) (DiscardType, bool) {
	if dt, bad, ok := v.checkIPv4Fast(b); ok {
		return dt, bad
	}
	return v.checkGeneric(b)
}

// checkGeneric applies the discard mask through the generic parser.
func (v *VI) checkGeneric(b []byte) (DiscardType, bool) {
	var p frame.Packet
	err := frame.Parse(b, &p)
	if err == frame.ErrTruncated && v.discards&DiscardEthLenErr != 0 {
		v.st.RxDiscardTrunc++
		return DiscardTrunc, true
	}
	if p.IPVersion == 4 && v.discards&DiscardL3CsumErr != 0 && !p.IPv4HeaderOK(b) {
		v.st.RxDiscardCsum++
		return DiscardCsumBad, true
	}
	if err == nil && v.discards&DiscardL4CsumErr != 0 && !p.L4ChecksumOK(b) {
		v.st.RxDiscardCsum++
		return DiscardCsumBad, true
	}
	return 0, false
}

// EventQHasEvent reports whether EventQPoll would return something now
// (ef_eventq_has_event). No system call.
func (v *VI) EventQHasEvent() bool {
	switch v.state {
	case stateResetPending:
		return true
	case stateOK:
	default:
		return false
	}
	if v.oflow || v.sw.ready() {
		return true
	}
	if v.hasRx && v.r.Rx.Available() > 0 {
		return true
	}
	if v.txScan != v.txTail {
		if v.r.Comp.Available() > 0 {
			return true
		}
		e := v.txFifo[v.txScan&v.txMask]
		return e.chunk&txBad != 0 || v.txDone[e.chunk] > 0
	}
	return false
}

// EventQPut posts a software event carrying data (ef_eventq_put). Any
// goroutine may call it; it is lock-free and makes a system call only to
// wake a goroutine blocked in Wait. ErrAgain when the SW queue is full.
func (v *VI) EventQPut(data uint16) error {
	if !v.sw.put(data) {
		return ErrAgain
	}
	if v.waiting.Load() != 0 {
		v.wake()
	}
	return nil
}

func (v *VI) wake() {
	one := uint64(1)
	_, _ = unix.Write(v.evfd, (*[8]byte)(unsafe.Pointer(&one))[:])
}

// ---- kicks and the polling policy ----

func (v *VI) kickTX() {
	v.st.TxKicks++
	switch e := xsk.KickTx(v.fd); e {
	case 0:
		v.txKick, v.txKickI = false, false
	case unix.EAGAIN, unix.EBUSY, unix.ENOBUFS:
		v.st.TxKickRetries++
		v.txKick = true
	case unix.ENETDOWN:
		v.st.NetDown++
		v.txKick, v.txKickI = false, true
	case unix.ENXIO:
		v.resetNow()
	default:
		v.txKick = false
	}
}

func (v *VI) kickRX() {
	v.st.RxKicks++
	switch xsk.KickRx(v.fd) {
	case unix.ENXIO:
		v.resetNow()
	case unix.ENETDOWN:
		v.st.NetDown++
	}
}

func (v *VI) resetNow() {
	if v.state == stateOK {
		v.state = stateResetPending
	}
}

func (v *VI) idleKick() {
	v.st.IdleKicks++
	if v.r.Fill.Pending() > 0 {
		v.r.Fill.Submit()
	}
	v.kickRX() // kernel wakeup if wanted, and the liveness probe
	if v.state != stateOK {
		return
	}
	if v.txKick || v.txKickI {
		v.kickTX()
	}
	if xsk.Statistics(v.fd, &v.kst) == nil && v.kst.RxRingFull > v.lastRingFull {
		v.lastRingFull = v.kst.RxRingFull
		v.oflow = true
	}
}

// ---- blocking ----

// Prime arms the VI for a blocking wait (ef_vi_prime). In the software
// backend arming happens inside Wait, so Prime only checks the VI is alive.
func (v *VI) Prime() error {
	if v.state == stateOK || v.state == stateResetPending {
		return nil
	}
	return v.stateErr()
}

// Wait blocks until EventQPoll has something to return or timeout passes
// (ef_eventq_wait); timeout < 0 waits for ever. It returns nil when events
// are ready, ErrTimeout on timeout, ErrReset/ErrClosed for a dead VI (a
// pending RESET event counts as ready).
func (v *VI) Wait(timeout time.Duration) error {
	return v.wait(context.Background(), timeout)
}

// WaitContext is Wait bounded by ctx (its error when ctx ends first).
func (v *VI) WaitContext(ctx context.Context) error {
	stop := context.AfterFunc(ctx, v.wake)
	defer stop()
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

// liveProbe bounds a blocking poll so a vanished device is noticed: poll on
// an unbound AF_XDP socket never reports readiness.
const liveProbe = 100 * time.Millisecond

func (v *VI) wait(ctx context.Context, timeout time.Duration) error {
	var deadline time.Time
	if timeout >= 0 {
		deadline = time.Now().Add(timeout)
	}
	for {
		if v.EventQHasEvent() {
			return nil
		}
		if v.state != stateOK {
			return v.stateErr()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		slice := liveProbe
		if v.txScan != v.txTail {
			slice = time.Millisecond // completions do not wake poll(2)
		}
		if timeout >= 0 {
			left := time.Until(deadline)
			if left <= 0 {
				return ErrTimeout
			}
			slice = min(slice, left)
		}
		v.waiting.Store(1)
		if v.sw.ready() {
			v.waiting.Store(0)
			return nil
		}
		fds := [2]unix.PollFd{{Fd: int32(v.fd), Events: unix.POLLIN}, {Fd: int32(v.evfd), Events: unix.POLLIN}}
		ts := unix.NsecToTimespec(slice.Nanoseconds())
		n, err := unix.Ppoll(fds[:], &ts, nil)
		v.waiting.Store(0)
		if err != nil && err != unix.EINTR {
			return fmt.Errorf("efvi wait: ppoll: %w", err)
		}
		if fds[1].Revents != 0 {
			var b [8]byte
			_, _ = unix.Read(v.evfd, b[:])
		}
		if n == 0 || fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			v.kickRX() // liveness probe: ENXIO once the device is gone
		}
	}
}

// ---- stats, close ----

// Stats reads the kernel's counters (one getsockopt) and returns them with
// the SDK's (ef_vi_stats_query).
func (v *VI) Stats() (Stats, error) {
	if v.state == stateClosed {
		return Stats{}, ErrClosed
	}
	if err := xsk.Statistics(v.fd, &v.kst); err != nil {
		return v.st, fmt.Errorf("efvi stats: getsockopt XDP_STATISTICS: %w", err)
	}
	s := v.st
	s.RxNoDesc = v.kst.RxFillRingEmptyDescs
	s.RxRingFull = v.kst.RxRingFull
	s.RxDropped = v.kst.RxDropped
	s.RxInvalidDescs = v.kst.RxInvalidDescs
	s.TxInvalidDescs = v.kst.TxInvalidDescs
	s.TxRingEmpty = v.kst.TxRingEmptyDescs
	return s, nil
}

// Close releases the VI: it unmaps the rings, closes the socket (which
// frees it in the kernel) and, when the VI came from a Backend, tells the
// backend to free it (removing its filters). Memory passed to
// NewSoftwareVI stays open. EventQPut must not race with Close.
func (v *VI) Close() error {
	if v.state == stateClosed {
		return nil
	}
	v.state = stateClosed
	var errs []error
	errs = append(errs, v.r.Close(), v.xskFile.Close(), unix.Close(v.evfd))
	if v.ownMem {
		errs = append(errs, v.mem.Close())
	}
	if v.backend != nil {
		errs = append(errs, v.backend.FreeVI(context.Background(), v.handle))
	}
	return errors.Join(errs...)
}
