package filter

import (
	"net/netip"
)

// Match is a bit set of the criteria a Spec uses.
type Match uint32

// Match criteria, one bit each (ef_vi's EF_FILTER_MATCH_* idea).
const (
	MatchLocalHost  Match = 1 << iota // destination IP (IP4/IP6 local or full)
	MatchLocalPort                    // destination L4 port
	MatchRemoteHost                   // source IP (full)
	MatchRemotePort                   // source L4 port (full)
	MatchIPProto                      // IP protocol (set by IP setters and by ipproto:)
	MatchEtherType                    // EtherType (set by IP setters: 0x0800 / 0x86dd, and by ethertype:)
	MatchVLAN                         // outer 802.1Q VLAN id
	MatchLocalMAC                     // destination MAC
	MatchUnicastAll
	MatchMulticastAll
	MatchUnicastMismatch
	MatchMulticastMismatch
	MatchSniff       // port sniff (RX copies; kernel keeps receiving)
	MatchTxSniff     // port TX sniff
	MatchBlockKernel // block-kernel, -unicast, -multicast: see Block
)

// Flags mirror enum ef_filter_flags.
type Flags uint32

// Filter flags, with ef_vi's values.
const (
	FlagNone             Flags = 0
	FlagMcastLoopReceive Flags = 0x2
	FlagExclusiveRxq     Flags = 0x4
	FlagSharedRxq        Flags = 0x8
)

// Block says which kernel traffic a block-kernel filter stops.
type Block uint8

// Block kinds.
const (
	BlockAll Block = iota
	BlockUnicast
	BlockMulticast
)

// IP protocol numbers used by the IP setters.
const (
	ProtoTCP uint8 = 6
	ProtoUDP uint8 = 17
)

// EtherTypes set implicitly by the IP setters.
const (
	EtherTypeIPv4 uint16 = 0x0800
	EtherTypeIPv6 uint16 = 0x86dd
)

// Spec is one filter specification. The zero value is an empty spec with no
// flags. Fields are meaningful only when the matching bit is set in Match.
type Spec struct {
	Flags Flags
	Match Match

	IPProto    uint8
	EtherType  uint16
	LocalHost  netip.Addr // IPv4 or IPv6; family agrees with EtherType
	LocalPort  uint16
	RemoteHost netip.Addr
	RemotePort uint16
	VLAN       uint16 // 0..4095
	LocalMAC   [6]byte
	Promisc    bool  // sniff: promiscuous
	Block      Block // block-kernel variant
}

// Has reports whether every bit of m is set.
func (s Spec) Has(m Match) bool { return s.Match&m == m }
