package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

func localSpec(proto uint8, host string, port uint16) filter.Spec {
	a := netip.MustParseAddr(host)
	et := filter.EtherTypeIPv4
	if a.Is6() {
		et = filter.EtherTypeIPv6
	}
	return filter.Spec{Match: filter.MatchLocalHost | filter.MatchLocalPort | filter.MatchIPProto | filter.MatchEtherType,
		IPProto: proto, EtherType: et, LocalHost: a, LocalPort: port}
}

func fullSpec(proto uint8, host string, port uint16, rhost string, rport uint16) filter.Spec {
	s := localSpec(proto, host, port)
	s.Match |= filter.MatchRemoteHost | filter.MatchRemotePort
	s.RemoteHost, s.RemotePort = netip.MustParseAddr(rhost), rport
	return s
}

func withVLAN(s filter.Spec, v uint16) filter.Spec {
	s.Match |= filter.MatchVLAN
	s.VLAN = v
	return s
}

func macSpec(mac [6]byte) filter.Spec {
	return filter.Spec{Match: filter.MatchLocalMAC, LocalMAC: mac}
}

// rig is the port program with its maps and a filter table, no netdev:
// every VI "veth" is lo (ifindex 1), enough for BPF_PROG_TEST_RUN.
type rig struct {
	t  testing.TB
	m  *maps
	p  *progs
	tb *table
}

func newRig(t testing.TB, vis ...uint32) *rig {
	m, p := newTestObjs(t)
	tb := newTable(m, Limits{}.withDefaults(), func(uint32) (int, error) { return 1, nil })
	t.Cleanup(tb.close)
	if err := tb.writeConfig(); err != nil {
		t.Fatal(err)
	}
	for _, vi := range vis {
		if err := m.viDev.Put(vi, uint32(1)); err != nil {
			t.Fatalf("devmap: %v", err)
		}
	}
	return &rig{t: t, m: m, p: p, tb: tb}
}

func (r *rig) install(vi uint32, s filter.Spec) {
	r.t.Helper()
	if err := r.tb.install(vi, s); err != nil {
		r.t.Fatalf("install %+v for VI %d: %v", s, vi, err)
	}
}

func (r *rig) run(prog *ebpf.Program, pkt []byte, ctx any) uint32 {
	r.t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, Context: ctx})
	if err != nil {
		r.t.Fatalf("test run: %v", err)
	}
	return ret
}

func (r *rig) hits(vi uint32, s filter.Spec) uint64 {
	r.t.Helper()
	n, err := r.tb.hits(vi, s)
	if err != nil {
		r.t.Fatalf("hits: %v", err)
	}
	return n
}

func actName(a uint32) string {
	switch a {
	case xdpAborted:
		return "ABORTED"
	case xdpDrop:
		return "DROP"
	case xdpPass:
		return "PASS"
	case xdpRedirect:
		return "REDIRECT"
	}
	return "?"
}

type filt struct {
	vi   uint32
	spec filter.Spec
}

func TestPortProgramMatchOrder(t *testing.T) {
	local := localSpec(filter.ProtoUDP, "10.0.0.1", 5000)
	full := fullSpec(filter.ProtoUDP, "10.0.0.1", 5000, "10.0.0.2", 6000)
	tcpLocal := localSpec(filter.ProtoTCP, "10.0.0.1", 5000)
	vlanLocal := withVLAN(local, 100)
	ip6 := localSpec(filter.ProtoUDP, "fd00::1", 5000)
	ip6full := fullSpec(filter.ProtoUDP, "fd00::1", 5000, "fd00::2", 6000)
	mac := macSpec(macPort)
	macVLAN := withVLAN(mac, 7)
	udpProto := filter.Spec{Match: filter.MatchIPProto, IPProto: filter.ProtoUDP}
	etype := filter.Spec{Match: filter.MatchEtherType, EtherType: 0x88b5}
	macEtype := filter.Spec{Match: filter.MatchLocalMAC | filter.MatchEtherType, LocalMAC: macPort, EtherType: 0x88b5}
	ucAll := filter.Spec{Match: filter.MatchUnicastAll}
	mcAll := filter.Spec{Match: filter.MatchMulticastAll}
	ucMis := filter.Spec{Match: filter.MatchUnicastMismatch}
	mcMis := filter.Spec{Match: filter.MatchMulticastMismatch}

	frag := udp4("10.0.0.2", "10.0.0.1", 6000, 5000)
	frag.mf = true
	later := udp4("10.0.0.2", "10.0.0.1", 6000, 5000)
	later.fragOff = 100
	opts := udp4("10.0.0.9", "10.0.0.1", 1, 5000)
	opts.ipOptions = 8
	badIHL := udp4("10.0.0.9", "10.0.0.1", 1, 5000)
	badIHL.ihl = 4
	trunc := udp4("10.0.0.9", "10.0.0.1", 1, 5000)
	trunc.truncL4 = true
	tcp := udp4("10.0.0.9", "10.0.0.1", 1, 5000)
	tcp.proto = protoTCP
	tagged := func(f frame, v int) frame { f.vlan = v; return f }
	ext6 := udp6("fd00::2", "fd00::1", 6000, 5000)
	ext6.extHdr = true
	raw := func(dst [6]byte, et uint16) frame { return frame{dst: dst, src: macPeer, vlan: -1, etherType: et} }
	mcastUDP := udp4("10.0.0.2", "239.1.2.3", 1, 5000)
	mcastUDP.dst = macMcast

	cases := []struct {
		name    string
		filters []filt
		pkt     frame
		want    uint32
		hit     *filt // filter expected to count the hit (nil: none)
	}{
		{"no filters", nil, udp4("10.0.0.2", "10.0.0.1", 6000, 5000), xdpPass, nil},
		{"local", []filt{{1, local}}, udp4("10.0.0.2", "10.0.0.1", 6000, 5000), xdpRedirect, &filt{1, local}},
		{"local other port", []filt{{1, local}}, udp4("10.0.0.2", "10.0.0.1", 6000, 5001), xdpPass, nil},
		{"local other host", []filt{{1, local}}, udp4("10.0.0.2", "10.0.0.3", 6000, 5000), xdpPass, nil},
		{"full beats local", []filt{{1, local}, {2, full}}, udp4("10.0.0.2", "10.0.0.1", 6000, 5000), xdpRedirect, &filt{2, full}},
		{"full miss falls to local", []filt{{1, local}, {2, full}}, udp4("10.0.0.2", "10.0.0.1", 6001, 5000), xdpRedirect, &filt{1, local}},
		{"udp filter ignores tcp", []filt{{1, local}}, tcp, xdpPass, nil},
		{"tcp local", []filt{{1, tcpLocal}, {2, local}}, tcp, xdpRedirect, &filt{1, tcpLocal}},
		{"first fragment never matches IP", []filt{{1, local}}, frag, xdpPass, nil},
		{"later fragment never matches IP", []filt{{1, local}}, later, xdpPass, nil},
		{"fragment matches ipproto", []filt{{1, local}, {3, udpProto}}, frag, xdpRedirect, &filt{3, udpProto}},
		{"ipv4 options honoured", []filt{{1, local}}, opts, xdpRedirect, &filt{1, local}},
		{"bad IHL", []filt{{1, local}}, badIHL, xdpPass, nil},
		{"truncated L4", []filt{{1, local}}, trunc, xdpPass, nil},
		{"truncated L4 still ipproto", []filt{{1, local}, {3, udpProto}}, trunc, xdpRedirect, &filt{3, udpProto}},
		{"vlan filter on tagged", []filt{{1, local}, {2, vlanLocal}}, tagged(udp4("10.0.0.2", "10.0.0.1", 1, 5000), 100), xdpRedirect, &filt{2, vlanLocal}},
		{"vlan filter, other tag -> no-vlan filter", []filt{{1, local}, {2, vlanLocal}}, tagged(udp4("10.0.0.2", "10.0.0.1", 1, 5000), 200), xdpRedirect, &filt{1, local}},
		{"vlan filter ignores untagged", []filt{{2, vlanLocal}}, udp4("10.0.0.2", "10.0.0.1", 1, 5000), xdpPass, nil},
		{"vlan PCP bits ignored", []filt{{2, vlanLocal}}, tagged(udp4("10.0.0.2", "10.0.0.1", 1, 5000), 0xe000|100), xdpRedirect, &filt{2, vlanLocal}},
		{"ipv6 local", []filt{{1, ip6}}, udp6("fd00::2", "fd00::1", 6000, 5000), xdpRedirect, &filt{1, ip6}},
		{"ipv6 full", []filt{{1, ip6}, {2, ip6full}}, udp6("fd00::2", "fd00::1", 6000, 5000), xdpRedirect, &filt{2, ip6full}},
		{"ipv6 ext header", []filt{{1, ip6}}, ext6, xdpPass, nil},
		{"ipv4 filter ignores ipv6", []filt{{1, local}}, udp6("fd00::2", "fd00::1", 6000, 5000), xdpPass, nil},
		{"mac", []filt{{1, mac}}, raw(macPort, 0x88b5), xdpRedirect, &filt{1, mac}},
		{"ip beats mac", []filt{{1, mac}, {2, local}}, udp4("10.0.0.2", "10.0.0.1", 1, 5000), xdpRedirect, &filt{2, local}},
		{"mac+ethertype beats mac", []filt{{1, mac}, {2, macEtype}}, raw(macPort, 0x88b5), xdpRedirect, &filt{2, macEtype}},
		{"mac vlan", []filt{{1, mac}, {2, macVLAN}}, tagged(raw(macPort, 0x88b5), 7), xdpRedirect, &filt{2, macVLAN}},
		{"mac beats ethertype", []filt{{1, mac}, {2, etype}}, raw(macPort, 0x88b5), xdpRedirect, &filt{1, mac}},
		{"ethertype", []filt{{2, etype}}, raw(macPeer, 0x88b5), xdpRedirect, &filt{2, etype}},
		{"ethertype beats unicast-all", []filt{{2, etype}, {1, ucAll}}, raw(macPeer, 0x88b5), xdpRedirect, &filt{2, etype}},
		{"unicast-all", []filt{{1, ucAll}}, raw(macPeer, 0x1234), xdpRedirect, &filt{1, ucAll}},
		{"unicast-all ignores multicast", []filt{{1, ucAll}}, raw(macMcast, 0x1234), xdpPass, nil},
		{"multicast-all", []filt{{1, ucAll}, {2, mcAll}}, raw(macMcast, 0x1234), xdpRedirect, &filt{2, mcAll}},
		{"all beats mismatch", []filt{{1, ucAll}, {2, ucMis}}, raw(macPeer, 0x1234), xdpRedirect, &filt{1, ucAll}},
		{"unicast mismatch", []filt{{2, ucMis}, {3, mcMis}}, raw(macPeer, 0x1234), xdpRedirect, &filt{2, ucMis}},
		{"multicast mismatch", []filt{{2, ucMis}, {3, mcMis}}, raw(macMcast, 0x1234), xdpRedirect, &filt{3, mcMis}},
		{"multicast group replicated", []filt{{1, localSpec(filter.ProtoUDP, "239.1.2.3", 5000)}, {2, localSpec(filter.ProtoUDP, "239.1.2.3", 5000)}}, mcastUDP, xdpRedirect, &filt{1, localSpec(filter.ProtoUDP, "239.1.2.3", 5000)}},
		{"IP filter ignores dst MAC", []filt{{1, local}}, func() frame {
			f := udp4("10.0.0.2", "10.0.0.1", 1, 5000)
			f.dst = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
			return f
		}(), xdpRedirect, &filt{1, local}},
		{"block-kernel-unicast drops unmatched unicast", []filt{{1, filter.Spec{Match: filter.MatchBlockKernel, Block: filter.BlockUnicast}}}, udp4("10.0.0.2", "10.0.0.1", 1, 5000), xdpDrop, nil},
		{"block-kernel-unicast keeps multicast", []filt{{1, filter.Spec{Match: filter.MatchBlockKernel, Block: filter.BlockUnicast}}}, raw(macMcast, 0x1234), xdpPass, nil},
		{"block-kernel-multicast", []filt{{1, filter.Spec{Match: filter.MatchBlockKernel, Block: filter.BlockMulticast}}}, raw(macMcast, 0x1234), xdpDrop, nil},
		{"block-kernel does not stop filters", []filt{{1, filter.Spec{Match: filter.MatchBlockKernel}}, {2, local}}, udp4("10.0.0.2", "10.0.0.1", 1, 5000), xdpRedirect, &filt{2, local}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, 1, 2, 3)
			for _, f := range c.filters {
				r.install(f.vi, f.spec)
			}
			got := r.run(r.p.port, c.pkt.bytes(), nil)
			if got != c.want {
				t.Fatalf("action = %s, want %s", actName(got), actName(c.want))
			}
			for _, f := range c.filters {
				if f.spec.Match&filter.MatchBlockKernel != 0 {
					continue
				}
				want := uint64(0)
				if c.hit != nil && c.hit.spec == f.spec && (c.hit.vi == f.vi || f.spec.LocalHost.IsMulticast()) {
					want = 1
				}
				if n := r.hits(f.vi, f.spec); n != want {
					t.Errorf("filter VI %d %+v: hits = %d, want %d", f.vi, f.spec, n, want)
				}
			}
		})
	}
}

func TestPortProgramRemoveStopsMatching(t *testing.T) {
	r := newRig(t, 1)
	local := localSpec(filter.ProtoUDP, "10.0.0.1", 5000)
	pkt := udp4("10.0.0.2", "10.0.0.1", 1, 5000).bytes()
	r.install(1, local)
	if got := r.run(r.p.port, pkt, nil); got != xdpRedirect {
		t.Fatalf("installed: %s", actName(got))
	}
	if err := r.tb.remove(1, local); err != nil {
		t.Fatal(err)
	}
	if got := r.run(r.p.port, pkt, nil); got != xdpPass {
		t.Fatalf("removed: %s", actName(got))
	}
	if err := r.tb.remove(1, local); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("second remove: %v, want ENOENT", err)
	}
}

func TestPortProgramMissingVIDevDrops(t *testing.T) {
	r := newRig(t) // VI 5 has no devmap entry
	local := localSpec(filter.ProtoUDP, "10.0.0.1", 5000)
	r.install(5, local)
	if got := r.run(r.p.port, udp4("10.0.0.2", "10.0.0.1", 1, 5000).bytes(), nil); got != xdpDrop {
		t.Fatalf("action %s, want DROP (steal never leaks to the kernel)", actName(got))
	}
	c, err := r.m.readCounters(5)
	if err != nil {
		t.Fatal(err)
	}
	if c.RxRedirectErrors != 1 {
		t.Fatalf("rx_redirect_errors = %d, want 1", c.RxRedirectErrors)
	}
}

func TestFilterConflicts(t *testing.T) {
	r := newRig(t, 1, 2)
	local := localSpec(filter.ProtoUDP, "10.0.0.1", 5000)
	r.install(1, local)
	if err := r.tb.install(2, local); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("same unicast key for another VI: %v, want EEXIST", err)
	}
	if err := r.tb.install(1, local); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("duplicate: %v, want EEXIST", err)
	}
	mc := localSpec(filter.ProtoUDP, "239.1.1.1", 5000)
	r.install(1, mc)
	r.install(2, mc)
	if err := r.tb.install(2, mc); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("duplicate group member: %v, want EEXIST", err)
	}
	if n := len(r.tb.members); n != 1 {
		t.Fatalf("%d groups, want 1", n)
	}
	sniff := filter.Spec{Match: filter.MatchSniff}
	r.install(1, sniff)
	if err := r.tb.install(2, sniff); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("second sniff owner: %v, want EBUSY", err)
	}
	if err := r.tb.install(2, filter.Spec{Match: filter.MatchTxSniff}); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("tx sniff: %v, want EOPNOTSUPP", err)
	}
	for _, bad := range []filter.Spec{
		{},
		{Match: filter.MatchLocalHost, LocalHost: netip.MustParseAddr("10.0.0.1")},
		{Match: filter.MatchUnicastAll | filter.MatchVLAN},
		{Match: filter.MatchSniff | filter.MatchVLAN},
	} {
		if err := r.tb.install(1, bad); !errors.Is(err, unix.EINVAL) {
			t.Errorf("install %+v: %v, want EINVAL", bad, err)
		}
	}
	// Removing VI 1 leaves VI 2 alone in the group and frees VI 1's keys.
	if err := r.tb.removeVI(1); err != nil {
		t.Fatal(err)
	}
	if err := r.tb.install(2, local); err != nil {
		t.Fatalf("key freed by removeVI: %v", err)
	}
	if r.tb.sniff.Ifindex != 0 {
		t.Fatal("sniff survived removeVI")
	}
	for g, mem := range r.tb.members {
		if _, ok := mem[1]; ok || len(mem) != 1 {
			t.Fatalf("group %d members %v, want only VI 2", g, mem)
		}
	}
}

// xdpMd is struct xdp_md for BPF_PROG_TEST_RUN contexts.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

func TestVITxProgram(t *testing.T) {
	// Inline: the IPv4 source is compared in the program; map: more IPv4
	// sources than maxInlineSrcs, checked in the allowed map. IPv6 always
	// goes to the map.
	many := []string{"10.0.0.5", "fd00::5"}
	for i := range maxInlineSrcs {
		many = append(many, fmt.Sprintf("10.0.1.%d", i+1))
	}
	for _, srcs := range [][]string{{"10.0.0.5", "fd00::5"}, many} {
		t.Run(fmt.Sprintf("%d-sources", len(srcs)), func(t *testing.T) { testVITx(t, srcs) })
	}
}

func testVITx(t *testing.T, srcs []string) {
	r := newRig(t)
	const vi = 4
	srcMAC := [6]byte{0x02, 0xaa, 0, 0, 0, 4}
	var addrs []netip.Addr
	for _, a := range srcs {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	_, txProg := r.viProgs(vi, srcMAC, addrs...)
	good4 := udp4("10.0.0.5", "10.0.0.9", 1, 2)
	good4.src = srcMAC
	good6 := udp6("fd00::5", "fd00::9", 1, 2)
	good6.src = srcMAC
	badMAC := good4
	badMAC.src = macPeer
	badIP := udp4("10.0.0.6", "10.0.0.9", 1, 2)
	badIP.src = srcMAC
	badIP6 := udp6("fd00::6", "fd00::9", 1, 2)
	badIP6.src = srcMAC
	tagged := good4
	tagged.vlan = 5
	arp := func(sha [6]byte, spa string) []byte {
		f := frame{dst: [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src: srcMAC, vlan: -1, etherType: 0x0806}
		b := f.bytes()
		p := b[14:]
		copy(p[0:], []byte{0, 1, 8, 0, 6, 4, 0, 1})
		copy(p[8:], sha[:])
		a := netip.MustParseAddr(spa).As4()
		copy(p[14:], a[:])
		return b
	}
	other := frame{dst: macPeer, src: srcMAC, vlan: -1, etherType: 0x88b5}
	short := append(append([]byte(nil), srcMAC[:]...), srcMAC[:]...)
	short = append(short, 0x08, 0x00) // IPv4 EtherType, no header
	cases := []struct {
		name  string
		pkt   []byte
		want  uint32
		spoof bool
	}{
		{"ipv4", good4.bytes(), xdpRedirect, false},
		{"ipv6", good6.bytes(), xdpRedirect, false},
		{"vlan-tagged ipv4", tagged.bytes(), xdpRedirect, false},
		{"arp", arp(srcMAC, "10.0.0.5"), xdpRedirect, false},
		{"bad source MAC", badMAC.bytes(), xdpDrop, true},
		{"bad IPv4 source", badIP.bytes(), xdpDrop, true},
		{"bad IPv6 source", badIP6.bytes(), xdpDrop, true},
		{"arp bad sender IP", arp(srcMAC, "10.0.0.6"), xdpDrop, true},
		{"arp bad sender MAC", arp(macPeer, "10.0.0.5"), xdpDrop, true},
		{"other EtherType", other.bytes(), xdpDrop, true},
		{"truncated IPv4", short, xdpDrop, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, err := r.m.readCounters(vi)
			if err != nil {
				t.Fatal(err)
			}
			got := r.run(txProg, c.pkt, xdpMd{DataEnd: uint32(len(c.pkt)), IngressIfindex: 1})
			if got != c.want {
				t.Fatalf("action %s, want %s", actName(got), actName(c.want))
			}
			after, err := r.m.readCounters(vi)
			if err != nil {
				t.Fatal(err)
			}
			d := Counters{TxPackets: after.TxPackets - before.TxPackets, TxBytes: after.TxBytes - before.TxBytes, TxSpoofDrops: after.TxSpoofDrops - before.TxSpoofDrops}
			want := Counters{TxPackets: 1, TxBytes: uint64(len(c.pkt))}
			if c.spoof {
				want = Counters{TxSpoofDrops: 1}
			}
			if d != want {
				t.Fatalf("counter delta %+v, want %+v", d, want)
			}
		})
	}
}

func TestVIRxProgram(t *testing.T) {
	r := newRig(t)
	const vi = 3
	rxProg, _ := r.viProgs(vi, [6]byte{2})
	pkt := udp4("10.0.0.2", "10.0.0.1", 1, 5000).bytes()
	// No XSK in the xskmap: falls back to XDP_PASS (the peer's kernel stack).
	if got := r.run(rxProg, pkt, xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: 1}); got != xdpPass {
		t.Fatalf("action %s, want PASS", actName(got))
	}
	c, err := r.m.readCounters(vi)
	if err != nil {
		t.Fatal(err)
	}
	if c.RxPackets != 1 || c.RxBytes != uint64(len(pkt)) {
		t.Fatalf("counters %+v, want 1 packet of %d bytes", c, len(pkt))
	}
}

// viProgs sets VI vi up on the rig as CreateVI does (its veths are lo,
// ifindex 1, as BPF_PROG_TEST_RUN's default context says) and returns its
// RX and TX programs, built with its constants.
func (r *rig) viProgs(vi uint32, mac [6]byte, srcs ...netip.Addr) (rx, tx *ebpf.Program) {
	r.t.Helper()
	for _, a := range srcs {
		if err := r.m.allowed.Put(toSrcKey(vi, a), uint32(1)); err != nil {
			r.t.Fatal(err)
		}
	}
	if err := r.m.portDev.Put(uint32(0), uint32(1)); err != nil {
		r.t.Fatal(err)
	}
	p, err := loadVIProgs(r.m, newVIConsts(vi, mac, srcs))
	if err != nil {
		r.t.Fatalf("VI programs: %v", err)
	}
	r.t.Cleanup(p.close)
	return p.rx, p.tx
}
