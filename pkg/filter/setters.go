package filter

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// Groups of match bits used by the setters and by Validate.
const (
	matchIP       = MatchLocalHost | MatchLocalPort | MatchIPProto | MatchEtherType
	matchRemote   = MatchRemoteHost | MatchRemotePort
	matchAllMis   = MatchUnicastAll | MatchMulticastAll | MatchUnicastMismatch | MatchMulticastMismatch
	matchTerminal = MatchSniff | MatchTxSniff | MatchBlockKernel
	matchKnown    = matchIP | matchRemote | MatchVLAN | MatchLocalMAC | matchAllMis | matchTerminal
)

// MaxVLAN is the largest 802.1Q VLAN id.
const MaxVLAN = 4095

// VLANAny is the vlan argument of SetEthLocal that means "no VLAN match"
// (ef_vi's EF_FILTER_VLAN_ID_ANY).
const VLANAny = -1

func (s *Spec) errProto(format string, args ...any) error {
	return newError(syscall.EPROTONOSUPPORT, s.String(), format, args...)
}

func (s *Spec) errInval(format string, args ...any) error {
	return newError(syscall.EINVAL, s.String(), format, args...)
}

// SetIP4Local matches IPv4 packets of protocol proto (ProtoUDP or ProtoTCP)
// sent to host:port (ef_filter_spec_set_ip4_local).
func (s *Spec) SetIP4Local(proto uint8, host netip.Addr, port uint16) error {
	return s.setIP(false, proto, host, port, netip.Addr{}, 0)
}

// SetIP4Full matches the IPv4 5-tuple (ef_filter_spec_set_ip4_full). As in
// ef_vi the filter is "full" only when rhost is not 0.0.0.0 (or the zero
// Addr); otherwise it is a local filter and rport is ignored.
func (s *Spec) SetIP4Full(proto uint8, host netip.Addr, port uint16, rhost netip.Addr, rport uint16) error {
	return s.setIP(false, proto, host, port, rhost, rport)
}

// SetIP6Local is SetIP4Local for IPv6 (ef_filter_spec_set_ip6_local).
func (s *Spec) SetIP6Local(proto uint8, host netip.Addr, port uint16) error {
	return s.setIP(true, proto, host, port, netip.Addr{}, 0)
}

// SetIP6Full is SetIP4Full for IPv6 (ef_filter_spec_set_ip6_full): full only
// when rhost is not :: (or the zero Addr).
func (s *Spec) SetIP6Full(proto uint8, host netip.Addr, port uint16, rhost netip.Addr, rport uint16) error {
	return s.setIP(true, proto, host, port, rhost, rport)
}

func (s *Spec) setIP(v6 bool, proto uint8, host netip.Addr, port uint16, rhost netip.Addr, rport uint16) error {
	if other := s.Match &^ MatchVLAN; other != 0 {
		return s.errProto("spec already matches %s; an IP filter combines only with a VLAN: start from an empty Spec", other)
	}
	if proto != ProtoUDP && proto != ProtoTCP {
		return s.errProto("IP protocol %d is not supported by IP filters; use UDP (17) or TCP (6), or an ipproto filter", proto)
	}
	family, setter := "IPv4", "SetIP4*"
	if v6 {
		family, setter = "IPv6", "SetIP6*"
	}
	fix := func(a netip.Addr) netip.Addr {
		if !v6 {
			return a.Unmap()
		}
		return a
	}
	host = fix(host)
	if err := s.checkHost("local host", host, v6, family, setter); err != nil {
		return err
	}
	if host.IsUnspecified() {
		return s.errInval("local host %s is unspecified; give the address to steer (e.g. the pod IP)", host)
	}
	if port == 0 {
		return s.errInval("local port 0 is not a port; use 1..65535")
	}
	rhost = fix(rhost)
	full := rhost.IsValid() && !rhost.IsUnspecified()
	if full {
		if err := s.checkHost("remote host", rhost, v6, family, setter); err != nil {
			return err
		}
		if rhost.IsMulticast() {
			return s.errInval("remote host %s is a multicast address and cannot be a source; give the sender's unicast address", rhost)
		}
		if rport == 0 {
			return s.errInval("remote port 0 is not a port; use 1..65535, or a local filter to accept any sender")
		}
	}
	s.Match |= matchIP
	s.IPProto = proto
	s.EtherType = EtherTypeIPv4
	if v6 {
		s.EtherType = EtherTypeIPv6
	}
	s.LocalHost, s.LocalPort = host, port
	if full {
		s.Match |= matchRemote
		s.RemoteHost, s.RemotePort = rhost, rport
	}
	return nil
}

func (s *Spec) checkHost(what string, a netip.Addr, v6 bool, family, setter string) error {
	switch {
	case !a.IsValid():
		return s.errInval("%s is missing; give an %s address", what, family)
	case a.Zone() != "":
		return s.errInval("%s %s has a zone; filters match addresses only, drop %%%s", what, a, a.Zone())
	case v6 && a.Is4In6():
		return s.errInval("%s %s is an IPv4-mapped IPv6 address; use the IPv4 form with SetIP4*", what, a)
	case v6 != a.Is6():
		return s.errInval("%s %s is not an %s address; %s takes %s", what, a, family, setter, family)
	}
	return nil
}

// SetVLAN adds an outer 802.1Q VLAN id match (ef_filter_spec_set_vlan).
// Setting it twice, or on a sniff, tx-sniff or block-kernel spec, is
// EPROTONOSUPPORT; an id outside 0..4095 is EINVAL. Whether the VLAN suits the
// rest of the spec is Validate's job (e.g. unicast-all+VLAN is EINVAL at add).
func (s *Spec) SetVLAN(id int) error {
	if s.Match&MatchVLAN != 0 {
		return s.errProto("spec already matches VLAN %d; a filter matches one VLAN", s.VLAN)
	}
	if t := s.Match & matchTerminal; t != 0 {
		return s.errProto("a %s filter takes no other criteria; drop the VLAN", t)
	}
	if id < 0 || id > MaxVLAN {
		return s.errInval("VLAN id %d is out of range; use 0..%d", id, MaxVLAN)
	}
	s.Match |= MatchVLAN
	s.VLAN = uint16(id)
	return nil
}

// SetEthLocal matches the destination MAC, optionally on VLAN vlan
// (ef_filter_spec_set_eth_local; vlan VLANAny = no VLAN match). It combines
// with an ip_proto or ethertype match, not with IP, all or mismatch criteria.
func (s *Spec) SetEthLocal(vlan int, mac [6]byte) error {
	if s.Match&MatchLocalMAC != 0 {
		return s.errProto("spec already matches MAC %s; a filter matches one MAC", formatMAC(s.LocalMAC))
	}
	if bad := s.Match & (MatchLocalHost | matchAllMis | matchTerminal); bad != 0 {
		return s.errProto("a MAC filter cannot be combined with %s; start from an empty Spec", bad)
	}
	if vlan != VLANAny {
		if vlan < 0 || vlan > MaxVLAN {
			return s.errInval("VLAN id %d is out of range; use 0..%d, or VLANAny (-1) for no VLAN", vlan, MaxVLAN)
		}
		if s.Match&MatchVLAN != 0 {
			return s.errProto("spec already matches VLAN %d; pass VLANAny (-1) to SetEthLocal", s.VLAN)
		}
	}
	s.Match |= MatchLocalMAC
	s.LocalMAC = mac
	if vlan != VLANAny {
		s.Match |= MatchVLAN
		s.VLAN = uint16(vlan)
	}
	return nil
}

// SetEthType matches the EtherType (ef_filter_spec_set_eth_type), alone, with
// a VLAN or with a MAC. EtherTypes below 0x0600 (802.3 lengths) and VLAN tag
// protocols (0x8100, 0x88a8, 0x9100) are EINVAL: the data plane looks past
// VLAN tags, so such a filter could never match.
func (s *Spec) SetEthType(ethertype uint16) error {
	if s.Match&MatchLocalHost != 0 {
		return s.errProto("an IP filter already matches EtherType 0x%04x; start from an empty Spec", s.EtherType)
	}
	if s.Match&MatchEtherType != 0 {
		return s.errProto("spec already matches EtherType 0x%04x", s.EtherType)
	}
	if s.Match&MatchIPProto != 0 {
		return s.errProto("spec already matches IP protocol %d; ipproto and ethertype filters are separate", s.IPProto)
	}
	if bad := s.Match & (matchAllMis | matchTerminal); bad != 0 {
		return s.errProto("an ethertype match cannot be combined with %s", bad)
	}
	if err := checkEtherType(ethertype); err != "" {
		return s.errInval("%s", err)
	}
	s.Match |= MatchEtherType
	s.EtherType = ethertype
	return nil
}

func checkEtherType(t uint16) string {
	switch {
	case t < 0x0600:
		return fmt.Sprintf("EtherType 0x%04x is an 802.3 length, not an EtherType; use a value >= 0x0600", t)
	case t == 0x8100 || t == 0x88a8 || t == 0x9100:
		return fmt.Sprintf("EtherType 0x%04x is a VLAN tag protocol; match VLANs with vid=N instead", t)
	}
	return ""
}

// SetIPProto matches the IP protocol (ef_filter_spec_set_ip_proto), alone,
// with a VLAN or with a MAC.
func (s *Spec) SetIPProto(proto uint8) error {
	if s.Match&MatchLocalHost != 0 {
		return s.errProto("an IP filter already matches IP protocol %d; start from an empty Spec", s.IPProto)
	}
	if s.Match&MatchIPProto != 0 {
		return s.errProto("spec already matches IP protocol %d", s.IPProto)
	}
	if s.Match&MatchEtherType != 0 {
		return s.errProto("spec already matches EtherType 0x%04x; ipproto and ethertype filters are separate", s.EtherType)
	}
	if bad := s.Match & (matchAllMis | matchTerminal); bad != 0 {
		return s.errProto("an ipproto match cannot be combined with %s", bad)
	}
	s.Match |= MatchIPProto
	s.IPProto = proto
	return nil
}

func (s *Spec) setAllMis(m Match) error {
	if other := s.Match &^ MatchVLAN; other != 0 {
		return s.errProto("%s needs a spec that matches at most a VLAN, this one matches %s", m, other)
	}
	s.Match |= m
	return nil
}

// SetUnicastAll matches all unicast traffic (ef_filter_spec_set_unicast_all).
func (s *Spec) SetUnicastAll() error { return s.setAllMis(MatchUnicastAll) }

// SetMulticastAll matches all multicast traffic (ef_filter_spec_set_multicast_all).
func (s *Spec) SetMulticastAll() error { return s.setAllMis(MatchMulticastAll) }

// SetUnicastMismatch matches unicast traffic no other filter wants
// (ef_filter_spec_set_unicast_mismatch).
func (s *Spec) SetUnicastMismatch() error { return s.setAllMis(MatchUnicastMismatch) }

// SetMulticastMismatch matches multicast traffic no other filter wants
// (ef_filter_spec_set_multicast_mismatch).
func (s *Spec) SetMulticastMismatch() error { return s.setAllMis(MatchMulticastMismatch) }

func (s *Spec) setTerminal(m Match) error {
	if s.Match != 0 {
		return s.errProto("%s needs an empty spec, this one matches %s", m, s.Match)
	}
	s.Match = m
	return nil
}

// SetPortSniff receives copies of the port's RX traffic while the kernel keeps
// receiving it (ef_filter_spec_set_port_sniff). Needs an empty spec.
func (s *Spec) SetPortSniff(promisc bool) error {
	if err := s.setTerminal(MatchSniff); err != nil {
		return err
	}
	s.Promisc = promisc
	return nil
}

// SetTxPortSniff receives copies of the port's TX traffic
// (ef_filter_spec_set_tx_port_sniff). Needs an empty spec.
func (s *Spec) SetTxPortSniff() error { return s.setTerminal(MatchTxSniff) }

// SetBlockKernel stops the kernel receiving any traffic from the port
// (ef_filter_spec_set_block_kernel). Needs an empty spec.
func (s *Spec) SetBlockKernel() error { return s.setBlock(BlockAll) }

// SetBlockKernelUnicast stops the kernel receiving unicast traffic
// (ef_filter_spec_set_block_kernel_unicast). Needs an empty spec.
func (s *Spec) SetBlockKernelUnicast() error { return s.setBlock(BlockUnicast) }

// SetBlockKernelMulticast stops the kernel receiving multicast traffic
// (ef_filter_spec_set_block_kernel_multicast). Needs an empty spec.
func (s *Spec) SetBlockKernelMulticast() error { return s.setBlock(BlockMulticast) }

func (s *Spec) setBlock(b Block) error {
	if err := s.setTerminal(MatchBlockKernel); err != nil {
		return err
	}
	s.Block = b
	return nil
}

// String names the match bits, e.g. "local-host|local-port|vlan".
func (m Match) String() string {
	if m == 0 {
		return "nothing"
	}
	var b strings.Builder
	for bit := Match(1); bit != 0 && bit <= MatchBlockKernel; bit <<= 1 {
		if m&bit != 0 {
			if b.Len() > 0 {
				b.WriteByte('|')
			}
			b.WriteString(matchName(bit))
		}
	}
	if rest := m &^ matchKnown; rest != 0 {
		if b.Len() > 0 {
			b.WriteByte('|')
		}
		fmt.Fprintf(&b, "unknown(0x%x)", uint32(rest))
	}
	return b.String()
}

func matchName(bit Match) string {
	switch bit {
	case MatchLocalHost:
		return "local-host"
	case MatchLocalPort:
		return "local-port"
	case MatchRemoteHost:
		return "remote-host"
	case MatchRemotePort:
		return "remote-port"
	case MatchIPProto:
		return "ip-proto"
	case MatchEtherType:
		return "ethertype"
	case MatchVLAN:
		return "vlan"
	case MatchLocalMAC:
		return "local-mac"
	case MatchUnicastAll:
		return "unicast-all"
	case MatchMulticastAll:
		return "multicast-all"
	case MatchUnicastMismatch:
		return "unicast-mismatch"
	case MatchMulticastMismatch:
		return "multicast-mismatch"
	case MatchSniff:
		return "sniff"
	case MatchTxSniff:
		return "tx-sniff"
	case MatchBlockKernel:
		return "block-kernel"
	}
	return "unknown"
}
