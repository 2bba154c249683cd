package dataplane

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// The port program, in the order a frame meets it:
//
//  1. config: the per-kind presence bits and the block bits (one array
//     lookup, inlined by the verifier). No filter at all: XDP_PASS.
//  2. fast path, when only compact IPv4 filters exist (local or full,
//     without VLAN: the common case): parse Ethernet (+ one tag), IPv4,
//     UDP/TCP ports straight into a 16-byte compact key and look it up in
//     full4, then local4.
//  3. otherwise the generic path: parse every field into a 48-byte template
//     and walk the NIC's levels most specific first (portLevels), building
//     each level's key from the template; at the full and local levels an
//     IPv4 frame's VLAN-less lookup goes to the compact maps.
//  4. deliver a match (hit counter, then steal to the VI's veth or replicate
//     to its group), or block/pass what matched nothing.

// Stack layout of the port program (offsets from R10).
const (
	stKey      = -48  // filterKey being looked up (48 bytes)
	stTmpl     = -96  // parsed packet fields in filterKey layout (48 bytes)
	stFlags    = -104 // u32 pktFlag*
	stScratch  = -112 // u32 scratch key for array/hash lookups
	stBlock    = -116 // u32 block bitmask from the config map
	stPresent  = -120 // u32 kind bitmask from the config map
	stKey4     = -136 // compact IPv4 key (16 bytes; local4 uses the first 8)
	pktMcast   = 1    // destination MAC is multicast/broadcast
	pktIP      = 2    // IPv4 (not a fragment) or IPv6 addresses are in the template
	pktL4      = 4    // UDP/TCP ports are in the template
	pktIP4     = 8    // the addresses are IPv4 (stKey4 is built when pktL4 too)
	nKeyDWords = filterKeySize / 8
)

// Registers of the port program (callee-saved).
const (
	pCtx  = asm.R6
	pData = asm.R7
	pEnd  = asm.R8
	pL3   = asm.R9
)

// level is one step of the port program's lookup, most specific first.
type level struct {
	kind   uint8 // key kind; for all/mismatch the unicast kind (multicast = kind+1)
	byCast bool  // kind + (packet is multicast)
	need   uint32
	vlan   bool // look up with the packet's VLAN, then without
	fields []keyField
	// compact is the presence bit of the compact IPv4 map that holds this
	// level's VLAN-less IPv4 keys (0: none).
	compact uint32
}

type keyField struct {
	off  int16
	size asm.Size
}

var (
	fProto = keyField{keyOffProto, asm.Byte}
	fEth   = keyField{keyOffEtherType, asm.Half}
	fLPort = keyField{keyOffLPort, asm.Half}
	fRPort = keyField{keyOffRPort, asm.Half}
	fMAC0  = keyField{keyOffMAC, asm.Half}
	fMAC1  = keyField{keyOffMAC + 2, asm.Word}
	fLA0   = keyField{keyOffLAddr, asm.DWord}
	fLA1   = keyField{keyOffLAddr + 8, asm.DWord}
	fRA0   = keyField{keyOffRAddr, asm.DWord}
	fRA1   = keyField{keyOffRAddr + 8, asm.DWord}
)

// portLevels is the NIC's match order.
func portLevels() []level {
	return []level{
		{kind: kindFull, need: pktIP | pktL4, vlan: true, fields: []keyField{fProto, fEth, fLPort, fRPort, fLA0, fLA1, fRA0, fRA1}, compact: bitFull4},
		{kind: kindLocal, need: pktIP | pktL4, vlan: true, fields: []keyField{fProto, fEth, fLPort, fLA0, fLA1}, compact: bitLocal4},
		{kind: kindMACEtherType, vlan: true, fields: []keyField{fEth, fMAC0, fMAC1}},
		{kind: kindMACProto, vlan: true, fields: []keyField{fProto, fMAC0, fMAC1}},
		{kind: kindMAC, vlan: true, fields: []keyField{fMAC0, fMAC1}},
		{kind: kindEtherType, vlan: true, fields: []keyField{fEth}},
		{kind: kindIPProto, vlan: true, fields: []keyField{fProto}},
		{kind: kindUnicastAll, byCast: true},
		{kind: kindUnicastMis, byCast: true, vlan: true},
	}
}

// genericLevels are the presence bits of the kinds only the generic path
// looks up.
const genericLevels = (1<<(kindMulticastMis+1) - 1) &^ 1

// buildPortXDP generates the port's XDP program.
func buildPortXDP(m *maps) asm.Instructions {
	g := &gen{}
	g.portConfig(m)
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stPresent, asm.Word),
		asm.And.Imm(asm.R1, genericLevels),
		asm.JNE.Imm(asm.R1, 0, "generic"),
	)
	g.fastIPv4(m)
	g.mark("generic")
	g.parseTemplate()
	g.mark("lookup")
	g.key4FromTemplate()
	for _, lv := range portLevels() {
		g.portLevel(m, lv)
	}
	g.noMatch()
	g.deliver(m)
	return g.insns
}

// portConfig: ctx, the config bits on the stack, data/end, and the
// multicast flag; a frame with no filter installed or shorter than an
// Ethernet header passes.
func (g *gen) portConfig(m *maps) {
	g.emit(
		asm.Mov.Reg(pCtx, asm.R1),
		asm.StoreImm(asm.RFP, stScratch, 0, asm.Word),
	)
	g.lookup(m.config, stScratch, "pass")
	g.emit(
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, stPresent, asm.R1, asm.Word),
		asm.LoadMem(asm.R2, asm.R0, 4, asm.Word),
		asm.StoreMem(asm.RFP, stBlock, asm.R2, asm.Word),
		asm.Or.Reg(asm.R1, asm.R2),
		asm.JEq.Imm(asm.R1, 0, "pass"), // no filters at all
		asm.LoadMem(pData, pCtx, xdpMdData, asm.Word),
		asm.LoadMem(pEnd, pCtx, xdpMdDataEnd, asm.Word),
	)
	g.need(pData, 14, pEnd, "pass") // runt: the kernel deals with it
	g.emit(
		asm.LoadMem(asm.R1, pData, 0, asm.Byte),
		asm.And.Imm(asm.R1, pktMcast),
		asm.StoreMem(asm.RFP, stFlags, asm.R1, asm.Word),
	)
}

// fastIPv4 is the path when only compact filters exist: an untagged or
// tagged IPv4 UDP/TCP frame (not a fragment, IHL honoured) is looked up in
// full4 then local4; anything else matches nothing.
func (g *gen) fastIPv4(m *maps) {
	g.l3(pData, pEnd, pL3, "pass")
	g.emit(asm.JNE.Imm(asm.R1, be16(0x0800), "nomatch"))
	g.ipv4Ports(pL3, "nomatch")
	// R3 = L4 header: build the compact key from the packet.
	g.emit(
		asm.LoadMem(asm.R1, pL3, 16, asm.Word),
		asm.StoreMem(asm.RFP, stKey4+key4OffLAddr, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R3, 2, asm.Half),
		asm.StoreMem(asm.RFP, stKey4+key4OffLPort, asm.R1, asm.Half),
		asm.StoreMem(asm.RFP, stKey4+key4OffProto, asm.R4, asm.Byte),
		asm.StoreImm(asm.RFP, stKey4+key4OffProto+1, 0, asm.Byte),
		asm.LoadMem(asm.R1, pL3, 12, asm.Word),
		asm.StoreMem(asm.RFP, stKey4+key4OffRAddr, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R3, 0, asm.Half),
		asm.StoreMem(asm.RFP, stKey4+key4OffRPort, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, stKey4+key4OffRPort+2, 0, asm.Half),
	)
	g.compactLookups(m)
	g.emit(asm.Ja.Label("nomatch"))
}

// ipv4Ports checks the IPv4 header at l3 (20 bytes present, not a fragment,
// IHL ≥ 5, UDP or TCP) and that the L4 ports are present; R3 = the L4
// header, R4 = the protocol. Anything else jumps to no.
func (g *gen) ipv4Ports(l3 asm.Register, no string) {
	g.need(l3, 20, pEnd, no)
	ports := g.label("ports")
	g.emit(
		asm.LoadMem(asm.R1, l3, 6, asm.Half),
		asm.And.Imm(asm.R1, be16(0x3fff)), // MF or fragment offset
		asm.JNE.Imm(asm.R1, 0, no),
		asm.LoadMem(asm.R4, l3, 9, asm.Byte),
		asm.JEq.Imm(asm.R4, protoUDP, ports),
		asm.JNE.Imm(asm.R4, protoTCP, no),
	)
	g.mark(ports)
	g.emit(
		asm.LoadMem(asm.R3, l3, 0, asm.Byte),
		asm.And.Imm(asm.R3, 0x0f),
		asm.JLT.Imm(asm.R3, 5, no),
		asm.LSh.Imm(asm.R3, 2),
		asm.Add.Reg(asm.R3, l3),
		asm.Mov.Reg(asm.R2, asm.R3),
		asm.Add.Imm(asm.R2, 4),
		asm.JGT.Reg(asm.R2, pEnd, no),
	)
}

// compactLookups looks stKey4 up in full4 then local4, each only when its
// presence bit is set; a hit jumps to "match".
func (g *gen) compactLookups(m *maps) {
	for _, c := range []struct {
		bit uint32
		m   *ebpf.Map
	}{{bitFull4, m.full4}, {bitLocal4, m.local4}} {
		skip := g.label("nocompact")
		g.present(c.bit, skip)
		g.lookupHit(c.m, stKey4, "match")
		g.mark(skip)
	}
}

// present jumps to absent unless presence bit is set in the config.
func (g *gen) present(bit uint32, absent string) {
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stPresent, asm.Word),
		asm.And.Imm(asm.R1, int32(1)<<bit),
		asm.JEq.Imm(asm.R1, 0, absent),
	)
}

// parseTemplate fills the 48-byte template with every field the generic
// levels use: destination MAC, VLAN, EtherType, IP protocol, addresses and
// ports, and sets the pkt* flags.
func (g *gen) parseTemplate() {
	for i := int16(0); i < nKeyDWords; i++ {
		g.emit(zero64(asm.RFP, stTmpl+8*i))
	}
	g.emit(
		asm.LoadMem(asm.R1, pData, 0, asm.Half),
		asm.StoreMem(asm.RFP, stTmpl+keyOffMAC, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, pData, 2, asm.Word),
		asm.StoreMem(asm.RFP, stTmpl+keyOffMAC+2, asm.R1, asm.Word),
		asm.StoreImm(asm.RFP, stTmpl+keyOffVLAN, vlanNone, asm.Half),
		asm.LoadMem(asm.R1, pData, 12, asm.Half),
		asm.JNE.Imm(asm.R1, be16(0x8100), "t_untagged"),
	)
	g.need(pData, 18, pEnd, "pass")
	g.emit(
		asm.LoadMem(asm.R1, pData, 14, asm.Half),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.And.Imm(asm.R1, 0x0fff),
		asm.StoreMem(asm.RFP, stTmpl+keyOffVLAN, asm.R1, asm.Half),
	)
	g.mark("t_untagged")
	g.l3(pData, pEnd, pL3, "pass")
	g.emit(
		asm.StoreMem(asm.RFP, stTmpl+keyOffEtherType, asm.R1, asm.Half),
		asm.JEq.Imm(asm.R1, be16(0x0800), "t_ipv4"),
		asm.JEq.Imm(asm.R1, be16(0x86dd), "t_ipv6"),
		asm.Ja.Label("lookup"),
	)

	// IPv4: IHL honoured; fragments keep only the protocol.
	g.mark("t_ipv4")
	g.need(pL3, 20, pEnd, "lookup")
	g.emit(
		asm.LoadMem(asm.R1, pL3, 9, asm.Byte),
		asm.StoreMem(asm.RFP, stTmpl+keyOffProto, asm.R1, asm.Byte),
		asm.LoadMem(asm.R2, pL3, 6, asm.Half),
		asm.And.Imm(asm.R2, be16(0x3fff)),
		asm.JNE.Imm(asm.R2, 0, "lookup"),
		asm.LoadMem(asm.R2, pL3, 0, asm.Byte),
		asm.And.Imm(asm.R2, 0x0f),
		asm.JLT.Imm(asm.R2, 5, "lookup"),
		asm.LoadMem(asm.R3, pL3, 16, asm.Word),
		asm.StoreMem(asm.RFP, stTmpl+keyOffLAddr, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, pL3, 12, asm.Word),
		asm.StoreMem(asm.RFP, stTmpl+keyOffRAddr, asm.R3, asm.Word),
	)
	g.setFlag(pktIP | pktIP4)
	g.emit(
		asm.LSh.Imm(asm.R2, 2),
		asm.Add.Reg(pL3, asm.R2),
		asm.Ja.Label("t_l4"),
	)

	// IPv6: fixed header only; an extension header is "not UDP/TCP".
	g.mark("t_ipv6")
	g.need(pL3, 40, pEnd, "lookup")
	g.emit(
		asm.LoadMem(asm.R1, pL3, 6, asm.Byte),
		asm.StoreMem(asm.RFP, stTmpl+keyOffProto, asm.R1, asm.Byte),
	)
	for _, c := range []struct{ from, to int16 }{{24, keyOffLAddr}, {32, keyOffLAddr + 8}, {8, keyOffRAddr}, {16, keyOffRAddr + 8}} {
		g.emit(
			asm.LoadMem(asm.R3, pL3, c.from, asm.DWord),
			asm.StoreMem(asm.RFP, stTmpl+c.to, asm.R3, asm.DWord),
		)
	}
	g.setFlag(pktIP)
	g.emit(asm.Add.Imm(pL3, 40))

	// L4 ports (UDP and TCP share the layout); R1 = protocol.
	g.mark("t_l4")
	g.emit(
		asm.JEq.Imm(asm.R1, int32(protoUDP), "t_ports"),
		asm.JEq.Imm(asm.R1, int32(protoTCP), "t_ports"),
		asm.Ja.Label("lookup"),
	)
	g.mark("t_ports")
	g.need(pL3, 4, pEnd, "lookup")
	g.emit(
		asm.LoadMem(asm.R3, pL3, 0, asm.Half),
		asm.StoreMem(asm.RFP, stTmpl+keyOffRPort, asm.R3, asm.Half),
		asm.LoadMem(asm.R3, pL3, 2, asm.Half),
		asm.StoreMem(asm.RFP, stTmpl+keyOffLPort, asm.R3, asm.Half),
	)
	g.setFlag(pktL4)
}

// setFlag ors f into the packet flags. Clobbers R3.
func (g *gen) setFlag(f int32) {
	g.emit(
		asm.LoadMem(asm.R3, asm.RFP, stFlags, asm.Word),
		asm.Or.Imm(asm.R3, f),
		asm.StoreMem(asm.RFP, stFlags, asm.R3, asm.Word),
	)
}

// key4FromTemplate builds the compact key from the template of an IPv4
// UDP/TCP frame.
func (g *gen) key4FromTemplate() {
	skip := g.label("nokey4")
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word),
		asm.And.Imm(asm.R1, pktIP4|pktL4),
		asm.JNE.Imm(asm.R1, pktIP4|pktL4, skip),
	)
	for _, c := range []struct {
		from, to int16
		size     asm.Size
	}{
		{keyOffLAddr, key4OffLAddr, asm.Word}, {keyOffLPort, key4OffLPort, asm.Half}, {keyOffRAddr, key4OffRAddr, asm.Word},
	} {
		g.emit(
			asm.LoadMem(asm.R1, asm.RFP, stTmpl+c.from, c.size),
			asm.StoreMem(asm.RFP, stKey4+c.to, asm.R1, c.size),
		)
	}
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stTmpl+keyOffProto, asm.Byte),
		asm.StoreMem(asm.RFP, stKey4+key4OffProto, asm.R1, asm.Byte),
		asm.StoreImm(asm.RFP, stKey4+key4OffProto+1, 0, asm.Byte),
		asm.LoadMem(asm.R1, asm.RFP, stTmpl+keyOffRPort, asm.Half),
		asm.StoreMem(asm.RFP, stKey4+key4OffRPort, asm.R1, asm.Half),
		asm.StoreImm(asm.RFP, stKey4+key4OffRPort+2, 0, asm.Half),
	)
	g.mark(skip)
}

// portLevel emits one level of the generic lookup: skip it when the frame
// lacks its fields or no filter of its kind exists; look its key up with
// the frame's VLAN, then without. A hit jumps to "match".
func (g *gen) portLevel(m *maps, lv level) {
	skip := g.label("skip")
	if lv.need != 0 {
		g.emit(
			asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word),
			asm.And.Imm(asm.R1, int32(lv.need)),
			asm.JNE.Imm(asm.R1, int32(lv.need), skip),
		)
	}
	if lv.compact != 0 {
		// The generic map holds this level's IPv6 keys and its IPv4 keys
		// with a VLAN; the VLAN-less IPv4 ones are in the compact map.
		noGeneric, ipv6 := g.label("nogeneric"), g.label("ipv6")
		g.present(uint32(lv.kind), noGeneric)
		g.genericKey(lv)
		g.lookupVLAN(m, noGeneric)
		g.mark(noGeneric)
		g.emit(
			asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word),
			asm.And.Imm(asm.R1, pktIP4),
			asm.JEq.Imm(asm.R1, 0, ipv6),
		)
		g.present(lv.compact, skip)
		m4 := m.local4
		if lv.compact == bitFull4 {
			m4 = m.full4
		}
		g.lookupHit(m4, stKey4, "match")
		g.emit(asm.Ja.Label(skip))
		g.mark(ipv6)
		g.present(uint32(lv.kind), skip)
		g.genericKey(lv)
		g.emit(asm.StoreImm(asm.RFP, stKey+keyOffVLAN, vlanNone, asm.Half))
		g.lookupHit(m.filters, stKey, "match")
		g.mark(skip)
		return
	}
	// kind into R3; presence test.
	g.emit(asm.Mov.Imm(asm.R3, int32(lv.kind)))
	if lv.byCast {
		g.emit(
			asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word),
			asm.And.Imm(asm.R1, pktMcast),
			asm.Add.Reg(asm.R3, asm.R1),
		)
	}
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stPresent, asm.Word),
		asm.RSh.Reg(asm.R1, asm.R3),
		asm.And.Imm(asm.R1, 1),
		asm.JEq.Imm(asm.R1, 0, skip),
	)
	g.genericKeyKind(lv)
	if lv.vlan {
		untagged := g.label("untagged")
		g.lookupVLAN(m, untagged)
		g.mark(untagged)
	}
	g.emit(asm.StoreImm(asm.RFP, stKey+keyOffVLAN, vlanNone, asm.Half))
	g.lookupHit(m.filters, stKey, "match")
	g.mark(skip)
}

// genericKey builds lv's key (kind lv.kind) from the template in stKey.
func (g *gen) genericKey(lv level) {
	g.emit(asm.Mov.Imm(asm.R3, int32(lv.kind)))
	g.genericKeyKind(lv)
}

// genericKeyKind builds lv's key with the kind in R3 (VLAN not yet set).
func (g *gen) genericKeyKind(lv level) {
	for i := int16(0); i < nKeyDWords; i++ {
		g.emit(zero64(asm.RFP, stKey+8*i))
	}
	g.emit(asm.StoreMem(asm.RFP, stKey+keyOffKind, asm.R3, asm.Byte))
	for _, f := range lv.fields {
		g.emit(
			asm.LoadMem(asm.R1, asm.RFP, stTmpl+f.off, f.size),
			asm.StoreMem(asm.RFP, stKey+f.off, asm.R1, f.size),
		)
	}
}

// lookupVLAN looks stKey up with the frame's VLAN (a hit jumps to "match");
// an untagged frame jumps to untagged, having looked up nothing. Falls
// through for a tagged frame that missed.
func (g *gen) lookupVLAN(m *maps, untagged string) {
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stTmpl+keyOffVLAN, asm.Half),
		asm.JEq.Imm(asm.R1, vlanNone, untagged),
		asm.StoreMem(asm.RFP, stKey+keyOffVLAN, asm.R1, asm.Half),
	)
	g.lookupHit(m.filters, stKey, "match")
}

// noMatch: block-kernel drops what no filter matched, else XDP_PASS.
func (g *gen) noMatch() {
	g.mark("nomatch")
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stBlock, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, stFlags, asm.Word),
		asm.And.Imm(asm.R2, pktMcast),
		asm.RSh.Reg(asm.R1, asm.R2), // bit 0 = unicast blocked, bit 1 = multicast blocked
		asm.And.Imm(asm.R1, 1),
		asm.JNE.Imm(asm.R1, 0, "drop"),
	)
	g.mark("pass")
	g.emit(asm.Mov.Imm(asm.R0, xdpPass), asm.Return())
	g.mark("drop")
	g.emit(asm.Mov.Imm(asm.R0, xdpDrop), asm.Return())
}

// deliver handles a match (R0 = *filterVal): count the hit, then steal (to
// the VI's veth; a missing devmap entry drops and counts a redirect error)
// or replicate (to every member of the group but the ingress device).
func (g *gen) deliver(m *maps) {
	g.mark("match")
	g.emit(
		asm.LoadMem(pData, asm.R0, valOffVI, asm.Word),
		asm.LoadMem(pEnd, asm.R0, valOffMode, asm.Word),
		asm.LoadMem(pL3, asm.R0, valOffGroup, asm.Word),
		asm.LoadMem(asm.R1, asm.R0, valOffSlot, asm.Word),
		asm.StoreMem(asm.RFP, stScratch, asm.R1, asm.Word),
	)
	g.lookup(m.hits, stScratch, "deliver")
	g.incU64(asm.R0, 0, asm.R1)
	g.mark("deliver")
	g.emit(
		asm.JEq.Imm(pEnd, modeReplicate, "replicate"),
		mapPtr(asm.R1, m.viDev),
		asm.Mov.Reg(asm.R2, pData),
		asm.Mov.Imm(asm.R3, xdpDrop),
		asm.FnRedirectMap.Call(),
		asm.JEq.Imm(asm.R0, xdpRedirect, "exit"),
		asm.StoreMem(asm.RFP, stScratch, pData, asm.Word),
	)
	g.lookup(m.stats, stScratch, "drop")
	g.incU64(asm.R0, cntRxRedirectErrors, asm.R1)
	g.emit(asm.Ja.Label("drop"))
	g.mark("replicate")
	g.emit(asm.StoreMem(asm.RFP, stScratch, pL3, asm.Word))
	g.lookup(m.groups, stScratch, "drop")
	g.emit(
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, bpfFBroadcast|bpfFExcludeIngress),
		asm.FnRedirectMap.Call(),
	)
	g.mark("exit")
	g.emit(asm.Return())
}
