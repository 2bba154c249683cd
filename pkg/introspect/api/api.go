// Package api is the diagnostics API of the agent as efvictl sees it: the
// reply types of every endpoint (see pkg/introspect for the endpoints) and
// the Client that queries the agent's root-only unix socket over HTTP+JSON.
// It links only the standard library, so efvictl stays small; the server
// side, which reads the data plane, is pkg/introspect.
package api

import (
	"time"
)

// Error is a query error with its HTTP status.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// PortInfo describes a port.
type PortInfo struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
	MAC     string `json:"mac"`
	MTU     int    `json:"mtu"`
	// DataPlane is "attached" (port XDP program live), "detached" (opened,
	// link gone), or "other" (a data plane this inspector cannot inspect).
	DataPlane    string   `json:"dataPlane"`
	XDPProgramID uint32   `json:"xdpProgramId,omitempty"`
	VIs          int      `json:"vis"`
	Capturing    []string `json:"capturing,omitempty"` // device ids being captured
}

// VIInfo describes a VI slot of an allocation, or a data-plane VI that no
// allocation claims (left by a previous agent).
type VIInfo struct {
	Device     string `json:"device"` // "<port>-vi<N>"
	Port       string `json:"port"`
	Slot       uint32 `json:"slot"`
	Pool       string `json:"pool"`
	Allocation string `json:"allocation"`
	Namespace  string `json:"namespace"`
	Pod        string `json:"pod"`
	// Veth is the VI's own veth (TX arrives there), PeerVeth carries its
	// XSK; both empty while the slot has no data-plane VI.
	Veth      string `json:"veth,omitempty"`
	PeerVeth  string `json:"peerVeth,omitempty"`
	DataPlane bool   `json:"dataPlane"` // the slot's VI exists in the data plane
	Socket    bool   `json:"socket"`    // a session of this agent holds its XSK
	// AllocationPinnedBytes, AllocationVIs and AllocationFilters are the
	// allocation's usage against its pool's limits (the same for every slot
	// of the allocation; see viservice.Usage).
	AllocationPinnedBytes uint64 `json:"allocationPinnedBytes"`
	AllocationVIs         int    `json:"allocationVIs"`
	AllocationFilters     int    `json:"allocationFilters"`
}

// FilterInfo is one installed filter.
type FilterInfo struct {
	Device    string `json:"device"`
	Port      string `json:"port"`
	Slot      uint32 `json:"slot"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Spec      string `json:"spec"`
	// Owner is "cni" (installed at pod start for the pod's declared
	// filters; Attachment names it) or "session" (added by the pod's SDK).
	Owner      string `json:"owner"`
	Attachment string `json:"attachment,omitempty"`
	Cookie     uint64 `json:"cookie"`
	Hits       uint64 `json:"hits"`
	HitsError  string `json:"hitsError,omitempty"`
}

// SocketStats are the XDP_STATISTICS of a VI's AF_XDP socket.
type SocketStats struct {
	RxNoDescDrops    uint64 `json:"rxNodescDrops"`  // rx_fill_ring_empty_descs: no RX buffer posted
	RxRingFull       uint64 `json:"rxRingFull"`     // event queue (RX ring) overflow
	RxDropped        uint64 `json:"rxDropped"`      // all RX drops the socket saw (includes nodesc)
	RxInvalidDescs   uint64 `json:"rxInvalidDescs"` // bad fill descriptors
	TxInvalidDescs   uint64 `json:"txInvalidDescs"` // bad TX descriptors
	TxRingEmptyDescs uint64 `json:"txRingEmptyDescs"`
}

// VIStats are one VI's counters.
type VIStats struct {
	Device           string       `json:"device"`
	Port             string       `json:"port"`
	Slot             uint32       `json:"slot"`
	Pool             string       `json:"pool"`
	Allocation       string       `json:"allocation"`
	Namespace        string       `json:"namespace"`
	Pod              string       `json:"pod"`
	RxPackets        uint64       `json:"rxPackets"`
	RxBytes          uint64       `json:"rxBytes"`
	TxPackets        uint64       `json:"txPackets"`
	TxBytes          uint64       `json:"txBytes"`
	TxSpoofDrops     uint64       `json:"txSpoofDrops"`
	RxRedirectErrors uint64       `json:"rxRedirectErrors"`
	Socket           *SocketStats `json:"socket,omitempty"` // nil: the agent holds no live socket for the VI
	SocketError      string       `json:"socketError,omitempty"`
}

// DefaultSocket is where the agent serves diagnostics.
const DefaultSocket = "/run/efvi/efvictl.sock"

// CaptureOptions bound a capture.
type CaptureOptions struct {
	SnapLen uint32        // bytes kept per frame; 0 = dataplane.MaxSnapLen
	Count   uint64        // stop after this many frames; 0 = no limit
	Timeout time.Duration // stop after this long; 0 = until cancelled
}

// CaptureSummary says what a capture wrote.
type CaptureSummary struct {
	Rx, Tx  uint64 // frames written, by direction
	Dropped uint64 // frames lost (reader too slow, or perf ring full)
}

// Trailer names of a capture response.
const (
	TrailerRx      = "Efvi-Rx"
	TrailerTx      = "Efvi-Tx"
	TrailerDropped = "Efvi-Dropped"
)

// ErrorReply is the body of every error answer.
type ErrorReply struct {
	Error string `json:"error"`
}
