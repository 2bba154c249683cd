package filter

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"unicode"
)

// Grammar is the filter spec grammar Parse accepts (efsink's, extended so
// that every valid Spec has a text form). Options come first, in any order;
// String prints them in this order.
const Grammar = `udp|tcp:[OPTS,]host:port[,rhost:rport] | eth:[OPTS,]mac[,ipproto=P|ethertype=T] | ` +
	`ethertype:[OPTS,]T | ipproto:[OPTS,]P | unicast-all | multicast-all | unicast-mis | multicast-mis | ` +
	`sniff[:promisc|no-promisc] | block-kernel | block-kernel-unicast | block-kernel-multicast; ` +
	`OPTS: mcastloop-rx, exclusive-rxq, shared-rxq, vid=N (any kind may take OPTS after a colon, e.g. unicast-mis:vid=5)`

func kindUsage(kind string) string {
	switch kind {
	case "udp", "tcp":
		return kind + ":[mcastloop-rx,][vid=N,]host:port[,rhost:rport] (IPv6 as [fd00::1]:5000)"
	case "eth":
		return "eth:[vid=N,]mac[,ipproto=P|ethertype=T] (mac as 02:00:00:00:00:01)"
	case "ethertype":
		return "ethertype:[vid=N,]T (T hex 0x88f7 or decimal)"
	case "ipproto":
		return "ipproto:[vid=N,]P (P 0..255 or udp, tcp, icmp, icmpv6)"
	case "sniff":
		return "sniff[:promisc|no-promisc]"
	case "unicast-mis", "multicast-mis":
		return kind + "[:vid=N]"
	}
	return kind + " (no arguments)"
}

// Parse parses one filter spec in efsink's grammar (see Grammar), runs the
// setters as efsink does (so bad combinations give EPROTONOSUPPORT), and
// validates the result (EINVAL). Syntax errors are EINVAL. The host of udp:
// and tcp: specs is required; see ParseWithDefaultHost.
func Parse(text string) (Spec, error) {
	return parse(text, netip.Addr{})
}

// ParseWithDefaultHost is Parse where the host of a udp:/tcp: spec may be
// omitted ("udp:5000", "udp:vid=5,5000") and is then host, e.g. the pod IP.
// An IPv4-mapped host (as netip.AddrFromSlice gives for a 16-byte net.IP) is
// used as IPv4.
func ParseWithDefaultHost(text string, host netip.Addr) (Spec, error) {
	if !host.IsValid() {
		return Spec{}, newError(syscall.EINVAL, text, "default host is missing; pass the pod IP")
	}
	return parse(text, host.Unmap())
}

// ParseList parses several specs separated by whitespace or ';', as a pod
// annotation holds them. Empty items are skipped; an empty list is nil. An
// error names the item by 1-based index and text.
func ParseList(text string) ([]Spec, error) {
	return parseList(text, netip.Addr{})
}

// ParseListWithDefaultHost is ParseList with ParseWithDefaultHost's default.
func ParseListWithDefaultHost(text string, host netip.Addr) ([]Spec, error) {
	if !host.IsValid() {
		return nil, newError(syscall.EINVAL, text, "default host is missing; pass the pod IP")
	}
	return parseList(text, host.Unmap())
}

func parseList(text string, host netip.Addr) ([]Spec, error) {
	items := strings.FieldsFunc(text, func(r rune) bool { return r == ';' || unicode.IsSpace(r) })
	var out []Spec
	for i, item := range items {
		s, err := parse(item, host)
		if err != nil {
			return nil, fmt.Errorf("filter list item %d of %d (%q): %w", i+1, len(items), item, err)
		}
		out = append(out, s)
	}
	return out, nil
}

type parser struct {
	text string
	kind string
}

func (p *parser) errf(format string, args ...any) error {
	return newError(syscall.EINVAL, p.text, "%s; expected %s", fmt.Sprintf(format, args...), kindUsage(p.kind))
}

// reframe gives a setter's error the input text as its spec.
func (p *parser) reframe(err error) error {
	var fe *Error
	if errors.As(err, &fe) {
		c := *fe
		c.Spec = p.text
		return &c
	}
	return err
}

func parse(text string, defHost netip.Addr) (Spec, error) {
	kind, rest, hasArgs := strings.Cut(text, ":")
	p := &parser{text: text, kind: kind}
	switch kind {
	case "udp", "tcp", "eth", "ethertype", "ipproto", "unicast-all", "multicast-all", "unicast-mis",
		"multicast-mis", "sniff", "block-kernel", "block-kernel-unicast", "block-kernel-multicast":
	case "tx-sniff":
		// The model keeps ef_filter_spec_set_tx_port_sniff (Spec.SetTxPortSniff),
		// but no backend delivers a port's TX copies, so the grammar refuses it
		// rather than accept what the data plane would refuse.
		return Spec{}, newError(syscall.EOPNOTSUPP, text, "tx-sniff (copies of the port's TX traffic) is not supported by kube-efvi's data plane; use sniff for copies of its RX traffic, or efvictl capture to see a VI's TX")
	case "":
		return Spec{}, newError(syscall.EINVAL, text, "empty filter spec; expected %s", Grammar)
	default:
		return Spec{}, newError(syscall.EINVAL, text, "unknown filter kind %q; expected %s", kind, Grammar)
	}
	var toks []string
	if hasArgs {
		if rest == "" {
			return Spec{}, p.errf("nothing after %q", kind+":")
		}
		toks = strings.Split(rest, ",")
	}
	var s Spec
	vid := VLANAny
	for len(toks) > 0 {
		t := toks[0]
		var flag Flags
		switch {
		case t == "mcastloop-rx":
			flag = FlagMcastLoopReceive
		case t == "exclusive-rxq":
			flag = FlagExclusiveRxq
		case t == "shared-rxq":
			flag = FlagSharedRxq
		case strings.HasPrefix(t, "vid="):
			if vid != VLANAny {
				return Spec{}, p.errf("option %q given twice", "vid")
			}
			v, ok := parseUint(t[len("vid="):], 10, MaxVLAN)
			if !ok {
				return Spec{}, p.errf("bad VLAN id in %q: use vid=0..%d", t, MaxVLAN)
			}
			vid = int(v)
			toks = toks[1:]
			continue
		default:
			flag = 0
		}
		if flag == 0 {
			break
		}
		if s.Flags&flag != 0 {
			return Spec{}, p.errf("option %q given twice", t)
		}
		s.Flags |= flag
		toks = toks[1:]
	}
	for _, t := range toks {
		if t == "" {
			return Spec{}, p.errf("empty token (doubled or trailing comma)")
		}
	}
	var err error
	switch kind {
	case "udp", "tcp":
		err = p.parseIP(&s, toks, vid, defHost)
	case "eth":
		err = p.parseEth(&s, toks, vid)
	case "ethertype":
		if len(toks) != 1 {
			return Spec{}, p.errf("want one EtherType, got %d arguments", len(toks))
		}
		t, ok := parseNumber(toks[0], 0xffff)
		if !ok {
			return Spec{}, p.errf("bad EtherType %q", toks[0])
		}
		err = s.SetEthType(uint16(t))
	case "ipproto":
		if len(toks) != 1 {
			return Spec{}, p.errf("want one IP protocol, got %d arguments", len(toks))
		}
		proto, ok := parseProto(toks[0])
		if !ok {
			return Spec{}, p.errf("bad IP protocol %q", toks[0])
		}
		err = s.SetIPProto(proto)
	case "sniff":
		promisc := true // efsink's default
		switch {
		case len(toks) == 0:
		case len(toks) == 1 && toks[0] == "promisc":
		case len(toks) == 1 && toks[0] == "no-promisc":
			promisc = false
		default:
			return Spec{}, p.errf("unexpected %q", strings.Join(toks, ","))
		}
		err = s.SetPortSniff(promisc)
	default:
		if len(toks) != 0 {
			return Spec{}, p.errf("unexpected %q", strings.Join(toks, ","))
		}
		switch kind {
		case "unicast-all":
			err = s.SetUnicastAll()
		case "multicast-all":
			err = s.SetMulticastAll()
		case "unicast-mis":
			err = s.SetUnicastMismatch()
		case "multicast-mis":
			err = s.SetMulticastMismatch()
		case "block-kernel":
			err = s.SetBlockKernel()
		case "block-kernel-unicast":
			err = s.SetBlockKernelUnicast()
		case "block-kernel-multicast":
			err = s.SetBlockKernelMulticast()
		}
	}
	if err == nil && vid != VLANAny && kind != "udp" && kind != "tcp" && kind != "eth" {
		err = s.SetVLAN(vid)
	}
	if err == nil {
		err = s.Validate()
	}
	if err != nil {
		return Spec{}, p.reframe(err)
	}
	return s, nil
}

func (p *parser) parseIP(s *Spec, toks []string, vid int, defHost netip.Addr) error {
	if len(toks) != 1 && len(toks) != 2 {
		return p.errf("want host:port and optionally rhost:rport, got %d arguments", len(toks))
	}
	var local netip.AddrPort
	if port, ok := parseUint(toks[0], 10, 0xffff); ok && defHost.IsValid() {
		local = netip.AddrPortFrom(defHost, uint16(port))
	} else if ok {
		return p.errf("host missing in %q: write host:port (e.g. %s:10.0.0.1:%s)", toks[0], p.kind, toks[0])
	} else {
		ap, err := parseAddrPort(toks[0])
		if err != nil {
			return p.errf("bad local host:port %q: %v", toks[0], err)
		}
		local = ap
	}
	var remote netip.AddrPort
	if len(toks) == 2 {
		ap, err := parseAddrPort(toks[1])
		if err != nil {
			return p.errf("bad remote rhost:rport %q: %v", toks[1], err)
		}
		remote = ap
		if remote.Addr().Is4() != local.Addr().Is4() {
			return p.errf("local %s and remote %s are different address families", local.Addr(), remote.Addr())
		}
	}
	if vid != VLANAny {
		if err := s.SetVLAN(vid); err != nil {
			return err
		}
	}
	proto := ProtoUDP
	if p.kind == "tcp" {
		proto = ProtoTCP
	}
	if local.Addr().Is4() {
		return s.SetIP4Full(proto, local.Addr(), local.Port(), remote.Addr(), remote.Port())
	}
	return s.SetIP6Full(proto, local.Addr(), local.Port(), remote.Addr(), remote.Port())
}

func parseAddrPort(t string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(t)
	if err != nil {
		return ap, errors.New("want 10.0.0.1:5000 or [fd00::1]:5000")
	}
	return ap, nil
}

func (p *parser) parseEth(s *Spec, toks []string, vid int) error {
	if len(toks) != 1 && len(toks) != 2 {
		return p.errf("want a MAC and optionally ipproto=P or ethertype=T, got %d arguments", len(toks))
	}
	mac, ok := parseMAC(toks[0])
	if !ok {
		return p.errf("bad MAC %q", toks[0])
	}
	if err := s.SetEthLocal(vid, mac); err != nil {
		return err
	}
	if len(toks) == 1 {
		return nil
	}
	switch name, val, _ := strings.Cut(toks[1], "="); name {
	case "ipproto":
		proto, ok := parseProto(val)
		if !ok {
			return p.errf("bad IP protocol %q", val)
		}
		return s.SetIPProto(proto)
	case "ethertype":
		t, ok := parseNumber(val, 0xffff)
		if !ok {
			return p.errf("bad EtherType %q", val)
		}
		return s.SetEthType(uint16(t))
	}
	return p.errf("unexpected %q after the MAC", toks[1])
}

// parseUint parses digits only (no sign, no spaces, no underscores) in base
// 10 or 16, up to max.
func parseUint(t string, base int, max uint64) (uint64, bool) {
	if t == "" || len(t) > 20 {
		return 0, false
	}
	for _, c := range t {
		if !(c >= '0' && c <= '9' || base == 16 && (c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F')) {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(t, base, 64)
	if err != nil || v > max {
		return 0, false
	}
	return v, true
}

// parseNumber parses 0x-prefixed hex or decimal.
func parseNumber(t string, max uint64) (uint64, bool) {
	if h, ok := strings.CutPrefix(t, "0x"); ok {
		return parseUint(h, 16, max)
	}
	if h, ok := strings.CutPrefix(t, "0X"); ok {
		return parseUint(h, 16, max)
	}
	return parseUint(t, 10, max)
}

const protoICMP, protoICMPv6 = 1, 58

func parseProto(t string) (uint8, bool) {
	switch t {
	case "udp":
		return ProtoUDP, true
	case "tcp":
		return ProtoTCP, true
	case "icmp":
		return protoICMP, true
	case "icmpv6":
		return protoICMPv6, true
	}
	v, ok := parseUint(t, 10, 255)
	return uint8(v), ok
}

func formatProto(p uint8) string {
	switch p {
	case ProtoUDP:
		return "udp"
	case ProtoTCP:
		return "tcp"
	case protoICMP:
		return "icmp"
	case protoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}

// parseMAC accepts 6 groups of 2 hex digits separated all by ':' or all by '-'.
func parseMAC(t string) ([6]byte, bool) {
	var mac [6]byte
	if len(t) != 17 {
		return mac, false
	}
	sep := t[2]
	if sep != ':' && sep != '-' {
		return mac, false
	}
	for i := range 6 {
		if i > 0 && t[3*i-1] != sep {
			return mac, false
		}
		v, ok := parseUint(t[3*i:3*i+2], 16, 0xff)
		if !ok {
			return mac, false
		}
		mac[i] = byte(v)
	}
	return mac, true
}

func formatMAC(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// String prints the canonical text of the spec, which Parse reads back to an
// equal Spec when the spec is valid. A spec whose criteria are not a valid
// combination prints as "invalid{...}" (not parseable), for error messages.
func (s Spec) String() string {
	class := s.shape()
	if class == ClassInvalid || (class == ClassFull || class == ClassLocal) && s.IPProto != ProtoUDP && s.IPProto != ProtoTCP {
		return s.debugString()
	}
	var kind string
	var args []string
	if s.Flags&FlagMcastLoopReceive != 0 {
		args = append(args, "mcastloop-rx")
	}
	if s.Flags&FlagExclusiveRxq != 0 {
		args = append(args, "exclusive-rxq")
	}
	if s.Flags&FlagSharedRxq != 0 {
		args = append(args, "shared-rxq")
	}
	if s.Match&MatchVLAN != 0 {
		args = append(args, "vid="+strconv.Itoa(int(s.VLAN)))
	}
	switch class {
	case ClassFull, ClassLocal:
		kind = formatProto(s.IPProto)
		args = append(args, netip.AddrPortFrom(s.LocalHost, s.LocalPort).String())
		if class == ClassFull {
			args = append(args, netip.AddrPortFrom(s.RemoteHost, s.RemotePort).String())
		}
	case ClassMAC:
		kind = "eth"
		args = append(args, formatMAC(s.LocalMAC))
		if s.Match&MatchIPProto != 0 {
			args = append(args, "ipproto="+formatProto(s.IPProto))
		}
		if s.Match&MatchEtherType != 0 {
			args = append(args, fmt.Sprintf("ethertype=0x%04x", s.EtherType))
		}
	case ClassEtherTypeProto:
		if s.Match&MatchIPProto != 0 {
			kind = "ipproto"
			args = append(args, formatProto(s.IPProto))
		} else {
			kind = "ethertype"
			args = append(args, fmt.Sprintf("0x%04x", s.EtherType))
		}
	case ClassAllMismatch:
		switch s.Match &^ MatchVLAN {
		case MatchUnicastAll:
			kind = "unicast-all"
		case MatchMulticastAll:
			kind = "multicast-all"
		case MatchUnicastMismatch:
			kind = "unicast-mis"
		default:
			kind = "multicast-mis"
		}
	case ClassSniff:
		kind = "sniff"
		if s.Promisc {
			args = append(args, "promisc")
		} else {
			args = append(args, "no-promisc")
		}
	case ClassTxSniff:
		kind = "tx-sniff"
	case ClassBlock:
		switch s.Block {
		case BlockUnicast:
			kind = "block-kernel-unicast"
		case BlockMulticast:
			kind = "block-kernel-multicast"
		default:
			kind = "block-kernel"
		}
	}
	if len(args) == 0 {
		return kind
	}
	return kind + ":" + strings.Join(args, ",")
}

func (s Spec) debugString() string {
	var b strings.Builder
	b.WriteString("invalid{")
	fmt.Fprintf(&b, "match=%s", s.Match)
	if s.Flags != 0 {
		fmt.Fprintf(&b, " flags=0x%x", uint32(s.Flags))
	}
	if s.Match&MatchVLAN != 0 {
		fmt.Fprintf(&b, " vid=%d", s.VLAN)
	}
	if s.Match&MatchLocalHost != 0 {
		fmt.Fprintf(&b, " local=%s", netip.AddrPortFrom(s.LocalHost, s.LocalPort))
	}
	if s.Match&MatchRemoteHost != 0 {
		fmt.Fprintf(&b, " remote=%s", netip.AddrPortFrom(s.RemoteHost, s.RemotePort))
	}
	if s.Match&MatchIPProto != 0 {
		fmt.Fprintf(&b, " ipproto=%d", s.IPProto)
	}
	if s.Match&MatchEtherType != 0 {
		fmt.Fprintf(&b, " ethertype=0x%04x", s.EtherType)
	}
	if s.Match&MatchLocalMAC != 0 {
		fmt.Fprintf(&b, " mac=%s", formatMAC(s.LocalMAC))
	}
	b.WriteByte('}')
	return b.String()
}

// MarshalText returns the canonical text; it fails for an invalid spec. It
// makes a Spec a JSON string, as in persisted Table snapshots.
func (s Spec) MarshalText() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return []byte(s.String()), nil
}

// UnmarshalText parses text with Parse.
func (s *Spec) UnmarshalText(text []byte) error {
	v, err := Parse(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
