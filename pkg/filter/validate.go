package filter

import (
	"net/netip"
	"syscall"
)

// Class is the kind of a valid filter. The constants are in the order the
// NIC (and the software data plane) tries them: a packet goes to the first
// class that matches. ClassInvalid is the class of a spec that fails Validate.
type Class uint8

// Filter classes in match order.
const (
	ClassInvalid        Class = iota
	ClassFull                 // IP 5-tuple (local + remote host and port) [+VLAN]
	ClassLocal                // local IP + port [+VLAN]
	ClassMAC                  // destination MAC [+VLAN] [+ip_proto or ethertype]
	ClassEtherTypeProto       // ethertype or ip_proto [+VLAN]
	ClassAllMismatch          // unicast/multicast all, unicast/multicast mismatch [+VLAN]
	ClassSniff                // RX port sniff
	ClassTxSniff              // TX port sniff
	ClassBlock                // block-kernel, -unicast, -multicast
)

func (c Class) String() string {
	switch c {
	case ClassFull:
		return "full"
	case ClassLocal:
		return "local"
	case ClassMAC:
		return "mac"
	case ClassEtherTypeProto:
		return "ethertype-proto"
	case ClassAllMismatch:
		return "all-mismatch"
	case ClassSniff:
		return "sniff"
	case ClassTxSniff:
		return "tx-sniff"
	case ClassBlock:
		return "block"
	}
	return "invalid"
}

// shape classifies the spec by its match bits alone.
func (s Spec) shape() Class {
	base := s.Match &^ MatchVLAN
	switch base {
	case matchIP:
		return ClassLocal
	case matchIP | matchRemote:
		return ClassFull
	case MatchLocalMAC, MatchLocalMAC | MatchIPProto, MatchLocalMAC | MatchEtherType:
		return ClassMAC
	case MatchIPProto, MatchEtherType:
		return ClassEtherTypeProto
	case MatchUnicastMismatch, MatchMulticastMismatch:
		return ClassAllMismatch
	}
	if s.Match&MatchVLAN != 0 {
		return ClassInvalid
	}
	switch base {
	case MatchUnicastAll, MatchMulticastAll:
		return ClassAllMismatch
	case MatchSniff:
		return ClassSniff
	case MatchTxSniff:
		return ClassTxSniff
	case MatchBlockKernel:
		return ClassBlock
	}
	return ClassInvalid
}

// Class returns the class of a valid spec, ClassInvalid if Validate fails.
func (s Spec) Class() Class {
	if s.Validate() != nil {
		return ClassInvalid
	}
	return s.shape()
}

// validCombos is the list Validate's errors quote.
const validCombos = "valid: IP4 or IP6 [+VLAN]; MAC [+VLAN] alone, +ip_proto or +ethertype; " +
	"ip_proto or ethertype [+VLAN]; unicast-all or multicast-all alone; unicast/multicast mismatch [+VLAN]; " +
	"sniff, tx-sniff or block-kernel alone"

// Validate applies ef_filter_add's rules: the valid combinations of criteria
// (see Class), flag rules (EXCLUSIVE_RXQ with SHARED_RXQ is EINVAL), and the
// values. It also requires fields whose match bit is clear to hold their zero
// value, so that two valid specs that filter the same packets are ==.
// Everything it rejects is EINVAL.
func (s Spec) Validate() error {
	inval := func(format string, args ...any) error {
		return newError(syscall.EINVAL, s.String(), format, args...)
	}
	if bad := s.Flags &^ (FlagMcastLoopReceive | FlagExclusiveRxq | FlagSharedRxq); bad != 0 {
		return inval("unknown flags 0x%x; known: MCAST_LOOP_RECEIVE 0x2, EXCLUSIVE_RXQ 0x4, SHARED_RXQ 0x8", uint32(bad))
	}
	if s.Flags&FlagExclusiveRxq != 0 && s.Flags&FlagSharedRxq != 0 {
		return inval("flags EXCLUSIVE_RXQ and SHARED_RXQ contradict each other; choose one")
	}
	if bad := s.Match &^ matchKnown; bad != 0 {
		return inval("unknown match bits 0x%x", uint32(bad))
	}
	if s.Match == 0 {
		return inval("empty spec matches nothing; call a setter first")
	}
	class := s.shape()
	if class == ClassInvalid {
		return inval("criteria %s are not a valid filter (%s)", s.Match, validCombos)
	}
	// Values of the criteria that are set; zero values for those that are not.
	if s.Match&MatchVLAN != 0 {
		if s.VLAN > MaxVLAN {
			return inval("VLAN id %d is out of range; use 0..%d", s.VLAN, MaxVLAN)
		}
	} else if s.VLAN != 0 {
		return inval("VLAN field is %d but the spec does not match VLAN; use SetVLAN", s.VLAN)
	}
	if s.Match&MatchLocalMAC == 0 && s.LocalMAC != ([6]byte{}) {
		return inval("LocalMAC is set but the spec does not match MAC; use SetEthLocal")
	}
	if s.Match&MatchSniff == 0 && s.Promisc {
		return inval("Promisc is set but the spec is not a sniff filter")
	}
	if s.Match&MatchBlockKernel == 0 && s.Block != BlockAll {
		return inval("Block is set but the spec is not a block-kernel filter")
	}
	if s.Block > BlockMulticast {
		return inval("unknown block-kernel kind %d", s.Block)
	}
	if s.Match&MatchIPProto == 0 && s.IPProto != 0 {
		return inval("IPProto is %d but the spec does not match the IP protocol", s.IPProto)
	}
	if s.Match&MatchEtherType == 0 && s.EtherType != 0 {
		return inval("EtherType is 0x%04x but the spec does not match EtherType", s.EtherType)
	}
	if s.Match&MatchLocalHost == 0 && (s.LocalHost != netip.Addr{} || s.LocalPort != 0) {
		return inval("local host/port are set but the spec is not an IP filter")
	}
	if s.Match&MatchRemoteHost == 0 && (s.RemoteHost != netip.Addr{} || s.RemotePort != 0) {
		return inval("remote host/port are set but the spec is not a full IP filter")
	}
	switch class {
	case ClassFull, ClassLocal:
		return s.validateIP(inval)
	case ClassEtherTypeProto, ClassMAC:
		if s.Match&MatchEtherType != 0 {
			if msg := checkEtherType(s.EtherType); msg != "" {
				return inval("%s", msg)
			}
		}
	}
	return nil
}

func (s Spec) validateIP(inval func(string, ...any) error) error {
	if s.IPProto != ProtoUDP && s.IPProto != ProtoTCP {
		return inval("IP protocol %d is not supported by IP filters; use UDP (17) or TCP (6)", s.IPProto)
	}
	var v6 bool
	switch s.EtherType {
	case EtherTypeIPv4:
	case EtherTypeIPv6:
		v6 = true
	default:
		return inval("an IP filter needs EtherType 0x0800 or 0x86dd, not 0x%04x", s.EtherType)
	}
	check := func(what string, a netip.Addr) error {
		switch {
		case !a.IsValid():
			return inval("%s is missing", what)
		case a.Zone() != "":
			return inval("%s %s has a zone; drop %%%s", what, a, a.Zone())
		case v6 && (!a.Is6() || a.Is4In6()):
			return inval("%s %s is not an IPv6 address but EtherType is IPv6", what, a)
		case !v6 && !a.Is4():
			return inval("%s %s is not an IPv4 address but EtherType is IPv4", what, a)
		case a.IsUnspecified():
			return inval("%s %s is unspecified", what, a)
		}
		return nil
	}
	if err := check("local host", s.LocalHost); err != nil {
		return err
	}
	if s.LocalPort == 0 {
		return inval("local port 0 is not a port; use 1..65535")
	}
	if s.Match&MatchRemoteHost != 0 {
		if err := check("remote host", s.RemoteHost); err != nil {
			return err
		}
		if s.RemoteHost.IsMulticast() {
			return inval("remote host %s is multicast and cannot be a source", s.RemoteHost)
		}
		if s.RemotePort == 0 {
			return inval("remote port 0 is not a port; use 1..65535")
		}
	}
	return nil
}

// IsMulticast reports whether the filter receives multicast: its local host
// is a multicast address, it is multicast-all or multicast-mismatch, or its
// MAC is a multicast (group) MAC, broadcast included. Identical multicast
// filters from different VIs replicate instead of conflicting.
func (s Spec) IsMulticast() bool {
	switch {
	case s.Match&MatchLocalHost != 0:
		return s.LocalHost.IsMulticast()
	case s.Match&(MatchMulticastAll|MatchMulticastMismatch) != 0:
		return true
	case s.Match&MatchLocalMAC != 0:
		return s.LocalMAC[0]&1 != 0
	}
	return false
}

// IsWide reports whether the filter can steer traffic that is not addressed
// to one specific IP of the owner: every class except ClassFull and
// ClassLocal, i.e. sniff, tx-sniff, unicast/multicast all, unicast/multicast
// mismatch, block-kernel (all three), ethertype, ipproto and MAC filters
// (including MAC+ip_proto/ethertype). An invalid spec is wide.
func (s Spec) IsWide() bool {
	switch s.shape() {
	case ClassFull, ClassLocal:
		return false
	}
	return true
}
