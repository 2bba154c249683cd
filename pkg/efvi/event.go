package efvi

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Addr is ef_addr: a packet buffer's address as the VI sees it. In the
// software backend it is the byte offset into the VI's memory region (the
// AF_XDP UMEM offset), so Addr(0) is the first byte of the region.
type Addr uint64

// RqID is the caller's id for a posted buffer (ef_request_id / dma_id).
type RqID uint32

// EventType is EF_EVENT_TYPE_* with ef_vi's numbers.
type EventType uint16

// Event types (ef_vi values).
const (
	EventRX             EventType = 0
	EventTX             EventType = 1
	EventRXDiscard      EventType = 2
	EventTXError        EventType = 3
	EventRXNoDescTrunc  EventType = 4
	EventSW             EventType = 5
	EventOflow          EventType = 6
	EventTXWithTimestam EventType = 7 // never produced by the software backend
	EventRXMulti        EventType = 9 // never produced by the software backend
	EventReset          EventType = 12
)

func (t EventType) String() string {
	switch t {
	case EventRX:
		return "RX"
	case EventTX:
		return "TX"
	case EventRXDiscard:
		return "RX_DISCARD"
	case EventTXError:
		return "TX_ERROR"
	case EventRXNoDescTrunc:
		return "RX_NO_DESC_TRUNC"
	case EventSW:
		return "SW"
	case EventOflow:
		return "OFLOW"
	case EventReset:
		return "RESET"
	}
	return fmt.Sprintf("EventType(%d)", uint16(t))
}

// RX event flags (EF_EVENT_FLAG_*).
const (
	FlagSOP       uint16 = 0x1 // start of packet
	FlagCont      uint16 = 0x2 // more buffers of this packet follow
	FlagMulticast uint16 = 0x8 // destination MAC is multicast/broadcast
)

// DiscardType is EF_EVENT_RX_DISCARD_TYPE.
type DiscardType uint16

// RX_DISCARD subtypes (ef_vi values).
const (
	DiscardCsumBad       DiscardType = 0
	DiscardMcastMismatch DiscardType = 1
	DiscardCrcBad        DiscardType = 2
	DiscardTrunc         DiscardType = 3
	DiscardRights        DiscardType = 4
	DiscardEvError       DiscardType = 5
	DiscardOther         DiscardType = 6
	DiscardInnerCsumBad  DiscardType = 7
)

// TxErrorType is EF_EVENT_TX_ERROR_TYPE.
type TxErrorType uint16

// TX_ERROR subtypes (ef_vi values).
const (
	TxErrorRights TxErrorType = 0 // descriptor outside the VI's memory region
	TxErrorOflow  TxErrorType = 1
	TxError2Big   TxErrorType = 2 // zero length, or crosses the end of its 2 KiB buffer
	TxErrorBus    TxErrorType = 3
)

// DiscardMask is ef_vi_rx_discard_err_flags: which errors turn an RX event
// into an RX_DISCARD event (ReceiveSetDiscards).
type DiscardMask uint32

// Discard flags (ef_vi values). The software backend implements L4Csum,
// L3Csum and EthLen; the others are accepted and have no effect (there is
// no FCS to check once the kernel has the frame).
const (
	DiscardL4CsumErr      DiscardMask = 0x0001
	DiscardL3CsumErr      DiscardMask = 0x0002
	DiscardEthFCSErr      DiscardMask = 0x0004
	DiscardEthLenErr      DiscardMask = 0x0008
	DiscardToBeDisc       DiscardMask = 0x0010
	DiscardInnerL4CsumErr DiscardMask = 0x0020 // EF_VI_DISCARD_RX_INNER_L4_CSUM_ERR
	DiscardInnerL3CsumErr DiscardMask = 0x0040 // EF_VI_DISCARD_RX_INNER_L3_CSUM_ERR
)

// DefaultDiscards is the mask a new VI starts with: IPv4 header checksum
// errors and truncated frames are discarded; UDP/TCP checksums are NOT
// checked by default (see the package doc: frames from the node's own
// kernel over veth carry offloaded, incomplete checksums, and checking
// costs a pass over the payload a NIC does in hardware).
const DefaultDiscards = DiscardL3CsumErr | DiscardEthLenErr | DiscardEthFCSErr

// Event is one ef_event. It is a fixed-size value; EventQPoll fills a slice
// of them owned by the caller.
type Event struct {
	Type EventType
	// Flags: RX/RX_DISCARD FlagSOP, FlagCont, FlagMulticast.
	Flags uint16
	// Q is the VI's queue id (ef_vi_instance).
	Q uint16
	// Sub is the DiscardType (RX_DISCARD), TxErrorType (TX_ERROR) or the
	// 16-bit data of a SW event.
	Sub uint16
	// Bytes is the received length (RX, RX_DISCARD): for a multi-buffer
	// frame, cumulative up to and including this buffer, as in ef_vi.
	Bytes uint32
	// RqID is the caller's id of the RX buffer (RX, RX_DISCARD), or of the
	// bad descriptor (TX_ERROR).
	RqID RqID
	// Addr is where this buffer's data starts (RX, RX_DISCARD): the region
	// offset the kernel wrote the frame to, which is the posted buffer's
	// chunk + RxFrameOffset (not the posted address itself).
	Addr Addr
	// Len is this buffer's data length (RX, RX_DISCARD).
	Len uint16
	// Count is the number of completions a TX event bundles (<= 64).
	Count uint16
	// seq is the TX FIFO position up to which TransmitUnbundle pops.
	seq uint32
}

// DiscardType returns the RX_DISCARD subtype.
func (e *Event) DiscardType() DiscardType { return DiscardType(e.Sub) }

// TxErrorType returns the TX_ERROR subtype.
func (e *Event) TxErrorType() TxErrorType { return TxErrorType(e.Sub) }

// SWData returns the 16 bits of a SW event.
func (e *Event) SWData() uint16 { return e.Sub }

// TransmitBatch is the most completions one TX event carries
// (EF_VI_TRANSMIT_BATCH): size TransmitUnbundle's ids slice to it.
const TransmitBatch = 64

// Errors. ErrAgain is ef_vi's -EAGAIN (ring full); it is a sentinel so the
// hot path does not allocate.
var (
	ErrAgain     = fmt.Errorf("efvi: ring full: %w", unix.EAGAIN)
	ErrReset     = fmt.Errorf("efvi: VI was reset (its device went away); allocate a new one: %w", unix.ENETRESET)
	ErrClosed    = errors.New("efvi: VI is closed")
	ErrTimeout   = fmt.Errorf("efvi: wait timed out: %w", unix.ETIMEDOUT)
	ErrNoBackend = errors.New("efvi: VI has no control-plane backend (built from fds); filters and agent stats need one")
	ErrNoRing    = errors.New("efvi: VI has no such ring (allocated with capacity 0)")
)
