package dataplane

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// refLookup is a Go model of the port program: parse pkt, then look the
// keys up in entries in the NIC's order. It returns the matching value.
func refLookup(pkt []byte, entries map[filterKey]filterVal) (filterVal, bool) {
	if len(pkt) < 14 {
		return filterVal{}, false
	}
	var tmpl filterKey
	copy(tmpl[keyOffMAC:], pkt[0:6])
	mcast := pkt[0]&1 != 0
	vlan := uint16(vlanNone)
	et := pkt[12:14]
	l3 := 14
	if binary.BigEndian.Uint16(et) == 0x8100 {
		if len(pkt) < 18 {
			return filterVal{}, false
		}
		vlan = binary.BigEndian.Uint16(pkt[14:]) & 0xfff
		et = pkt[16:18]
		l3 = 18
	}
	copy(tmpl[keyOffEtherType:], et)
	ip, l4ok := false, false
	proto := byte(0)
	l4 := 0
	switch binary.BigEndian.Uint16(et) {
	case 0x0800:
		if len(pkt) >= l3+20 {
			proto = pkt[l3+9]
			ihl := int(pkt[l3] & 0xf)
			if binary.BigEndian.Uint16(pkt[l3+6:])&0x3fff == 0 && ihl >= 5 {
				copy(tmpl[keyOffLAddr:], pkt[l3+16:l3+20])
				copy(tmpl[keyOffRAddr:], pkt[l3+12:l3+16])
				ip, l4 = true, l3+ihl*4
			}
		}
	case 0x86dd:
		if len(pkt) >= l3+40 {
			proto = pkt[l3+6]
			copy(tmpl[keyOffLAddr:], pkt[l3+24:l3+40])
			copy(tmpl[keyOffRAddr:], pkt[l3+8:l3+24])
			ip, l4 = true, l3+40
		}
	}
	tmpl[keyOffProto] = proto
	if ip && (proto == protoUDP || proto == protoTCP) && len(pkt) >= l4+4 {
		copy(tmpl[keyOffRPort:], pkt[l4:l4+2])
		copy(tmpl[keyOffLPort:], pkt[l4+2:l4+4])
		l4ok = true
	}
	for _, lv := range portLevels() {
		if lv.need&pktL4 != 0 && !l4ok {
			continue
		}
		var k filterKey
		k[keyOffKind] = lv.kind
		if lv.byCast && mcast {
			k[keyOffKind]++
		}
		for _, f := range lv.fields {
			n := map[int]int{1: 1, 2: 2, 4: 4, 8: 8}[f.size.Sizeof()]
			copy(k[f.off:int(f.off)+n], tmpl[f.off:int(f.off)+n])
		}
		tries := []uint16{vlanNone}
		if lv.vlan && vlan != vlanNone {
			tries = []uint16{vlan, vlanNone}
		}
		for _, v := range tries {
			binary.NativeEndian.PutUint16(k[keyOffVLAN:], v)
			if val, ok := entries[k]; ok {
				return val, true
			}
		}
	}
	return filterVal{}, false
}

// FuzzPortProgram runs arbitrary frames through the verified port program
// and checks it against the Go model: same action, same filter hit. Two
// filter sets: a mixed one (the generic path, with compact IPv4 keys looked
// up at their levels) and one of compact IPv4 filters only (the fast path).
func FuzzPortProgram(f *testing.F) {
	for _, fr := range []frame{
		udp4("10.0.0.2", "10.0.0.1", 6000, 5000),
		udp4("10.0.0.9", "10.0.0.1", 6000, 5000),
		udp6("fd00::2", "fd00::1", 6000, 5000),
		{dst: macPort, src: macPeer, vlan: 100, etherType: 0x0800, srcIP: udp4("1.1.1.1", "10.0.0.1", 1, 1).srcIP, dstIP: udp4("1.1.1.1", "10.0.0.1", 1, 1).dstIP, proto: protoTCP, sport: 1, dport: 5000},
		{dst: macMcast, src: macPeer, vlan: -1, etherType: 0x88b5},
		{dst: macPort, src: macPeer, vlan: 7, etherType: 0x0800, srcIP: udp4("10.0.0.2", "10.0.0.1", 1, 1).srcIP, dstIP: udp4("10.0.0.2", "10.0.0.1", 1, 1).dstIP, proto: protoUDP, sport: 6000, dport: 5000},
	} {
		f.Add(fr.bytes())
	}
	mixed := newRig(f, 1, 2, 3, 4, 5, 6)
	for _, s := range []filt{
		{1, localSpec(filter.ProtoUDP, "10.0.0.1", 5000)},
		{2, fullSpec(filter.ProtoUDP, "10.0.0.1", 5000, "10.0.0.2", 6000)},
		{3, withVLAN(localSpec(filter.ProtoTCP, "10.0.0.1", 5000), 100)},
		{4, localSpec(filter.ProtoUDP, "fd00::1", 5000)},
		{5, macSpec(macPort)},
		{6, filter.Spec{Match: filter.MatchMulticastAll}},
		{1, filter.Spec{Match: filter.MatchIPProto, IPProto: filter.ProtoTCP}},
		{3, withVLAN(fullSpec(filter.ProtoUDP, "10.0.0.1", 5000, "10.0.0.2", 6000), 7)},
	} {
		mixed.install(s.vi, s.spec)
	}
	fast := newRig(f, 1, 2, 3)
	for _, s := range []filt{
		{1, localSpec(filter.ProtoUDP, "10.0.0.1", 5000)},
		{2, fullSpec(filter.ProtoUDP, "10.0.0.1", 5000, "10.0.0.2", 6000)},
		{3, localSpec(filter.ProtoTCP, "10.0.0.1", 5000)},
		{3, localSpec(filter.ProtoUDP, "239.1.2.3", 5000)},
	} {
		fast.install(s.vi, s.spec)
	}
	if present := fastConfig(f, fast); present&genericLevels != 0 {
		f.Fatalf("compact-only filter set has generic kinds %#x: the fast path is not exercised", present)
	}
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) < 14 || len(pkt) > 1500 {
			return // BPF_PROG_TEST_RUN needs an Ethernet header
		}
		for _, r := range []*rig{mixed, fast} {
			checkAgainstModel(t, r, pkt)
		}
	})
}

// fastConfig returns the rig's presence bits.
func fastConfig(tb testing.TB, r *rig) uint32 {
	var c configVal
	if err := r.m.config.Lookup(uint32(0), &c); err != nil {
		tb.Fatal(err)
	}
	return c.Present
}

func checkAgainstModel(t *testing.T, r *rig, pkt []byte) {
	want, ok := refLookup(pkt, r.tb.entries)
	var before uint64
	if ok {
		before, _ = r.m.readHits(want.Slot)
	}
	got, err := r.p.port.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	wantAct := uint32(xdpPass)
	if ok {
		wantAct = xdpRedirect
	}
	if got != wantAct {
		t.Fatalf("frame %x: program %s, model %s (%+v)", pkt, actName(got), actName(wantAct), want)
	}
	if ok {
		n, err := r.m.readHits(want.Slot)
		if err != nil || n != before+1 {
			t.Fatalf("frame %x: model's filter slot %d has %d hits (%v), want %d", pkt, want.Slot, n, err, before+1)
		}
	}
}
