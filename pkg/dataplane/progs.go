package dataplane

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// XDP and TC return codes and redirect flags (uapi/linux/bpf.h).
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpRedirect = 4

	tcxNext = -1

	bpfFBroadcast      = 1 << 3
	bpfFExcludeIngress = 1 << 4

	packetOtherhost = 3 // skb->pkt_type
)

// Offsets in struct xdp_md and struct __sk_buff.
const (
	xdpMdData           = 0
	xdpMdDataEnd        = 4
	xdpMdIngressIfindex = 12
	skbPktType          = 4
)

// be16 returns the value a 16-bit load of the network-order bytes of v yields
// on this host, so programs compare raw loads against constants.
func be16(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// Stack layout of the port program (offsets from R10).
const (
	stKey      = -48  // filterKey being looked up (48 bytes)
	stTmpl     = -96  // parsed packet fields in filterKey layout (48 bytes)
	stFlags    = -104 // u32 pktFlag*
	stScratch  = -112 // u32 scratch key for array/hash lookups
	stPresent  = -120 // u32 kind bitmask from the config map
	stBlock    = -116 // u32 block bitmask from the config map
	pktMcast   = 1    // destination MAC is multicast/broadcast
	pktIP      = 2    // IPv4 (not a fragment) or IPv6 addresses are in the template
	pktL4      = 4    // UDP/TCP ports are in the template
	nKeyDWords = filterKeySize / 8
)

// mapPtr loads a reference to m into dst.
func mapPtr(dst asm.Register, m *ebpf.Map) asm.Instruction {
	ins := asm.LoadMapPtr(dst, 0)
	if err := ins.AssociateMap(m); err != nil {
		panic(err) // LoadMapPtr is always a map load
	}
	return ins
}

// zero64 is `*(u64 *)(dst + off) = 0` (BPF_ST|BPF_DW, which asm.StoreImm
// does not build).
func zero64(dst asm.Register, off int16) asm.Instruction {
	return asm.Instruction{OpCode: asm.StoreImmOp(asm.DWord), Dst: dst, Offset: off}
}

// gen accumulates instructions and hands out unique labels.
type gen struct {
	insns asm.Instructions
	n     int
	next  string // symbol to put on the next emitted instruction
}

func (g *gen) label(prefix string) string {
	g.n++
	return fmt.Sprintf("%s_%d", prefix, g.n)
}

func (g *gen) emit(ins ...asm.Instruction) {
	for _, in := range ins {
		if g.next != "" {
			if in.Symbol() != "" {
				g.insns = append(g.insns, asm.Ja.Label(in.Symbol()).WithSymbol(g.next))
			} else {
				in = in.WithSymbol(g.next)
			}
			g.next = ""
		}
		g.insns = append(g.insns, in)
	}
}

// mark puts label on the next instruction. Two marks in a row are joined
// with a no-op jump so neither label is lost.
func (g *gen) mark(label string) {
	if g.next != "" {
		g.emit(asm.Ja.Label(label))
	}
	g.next = label
}

// addU64 adds src (a register) to the u64 at ptr+off (per-CPU value: no atomics).
func (g *gen) addU64(ptr asm.Register, off int16, src asm.Register, tmp asm.Register) {
	g.emit(
		asm.LoadMem(tmp, ptr, off, asm.DWord),
		asm.Add.Reg(tmp, src),
		asm.StoreMem(ptr, off, tmp, asm.DWord),
	)
}

// incU64 adds 1 to the u64 at ptr+off.
func (g *gen) incU64(ptr asm.Register, off int16, tmp asm.Register) {
	g.emit(
		asm.LoadMem(tmp, ptr, off, asm.DWord),
		asm.Add.Imm(tmp, 1),
		asm.StoreMem(ptr, off, tmp, asm.DWord),
	)
}

// Offsets of the counters in a per-VI stats value.
const (
	cntRxPackets        = 0
	cntRxBytes          = 8
	cntTxPackets        = 16
	cntTxBytes          = 24
	cntTxSpoofDrops     = 32
	cntRxRedirectErrors = 40
)

// level is one step of the port program's lookup, most specific first.
type level struct {
	kind   uint8 // key kind; for all/mismatch the unicast kind (multicast = kind+1)
	byCast bool  // kind + (packet is multicast)
	need   uint32
	vlan   bool // look up with the packet's VLAN, then without
	fields []keyField
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
		{kind: kindFull, need: pktIP | pktL4, vlan: true, fields: []keyField{fProto, fEth, fLPort, fRPort, fLA0, fLA1, fRA0, fRA1}},
		{kind: kindLocal, need: pktIP | pktL4, vlan: true, fields: []keyField{fProto, fEth, fLPort, fLA0, fLA1}},
		{kind: kindMACEtherType, vlan: true, fields: []keyField{fEth, fMAC0, fMAC1}},
		{kind: kindMACProto, vlan: true, fields: []keyField{fProto, fMAC0, fMAC1}},
		{kind: kindMAC, vlan: true, fields: []keyField{fMAC0, fMAC1}},
		{kind: kindEtherType, vlan: true, fields: []keyField{fEth}},
		{kind: kindIPProto, vlan: true, fields: []keyField{fProto}},
		{kind: kindUnicastAll, byCast: true},
		{kind: kindUnicastMis, byCast: true, vlan: true},
	}
}

// buildPortXDP generates the port's XDP program: parse, look up filters most
// specific first, deliver to a VI (steal or replicate) or pass/block.
func buildPortXDP(m *maps) asm.Instructions {
	g := &gen{}
	const (
		ctx     = asm.R6
		data    = asm.R7
		dataEnd = asm.R8
		l3      = asm.R9
	)
	g.emit(
		asm.Mov.Reg(ctx, asm.R1),
		// config: present kinds and block bits.
		asm.StoreImm(asm.RFP, stScratch, 0, asm.Word),
		mapPtr(asm.R1, m.config),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stScratch),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, stPresent, asm.R1, asm.Word),
		asm.LoadMem(asm.R2, asm.R0, 4, asm.Word),
		asm.StoreMem(asm.RFP, stBlock, asm.R2, asm.Word),
		asm.Or.Reg(asm.R1, asm.R2),
		asm.JEq.Imm(asm.R1, 0, "pass"), // no filters at all: fast path
		asm.LoadMem(data, ctx, xdpMdData, asm.Word),
		asm.LoadMem(dataEnd, ctx, xdpMdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R2, data),
		asm.Add.Imm(asm.R2, 14),
		asm.JGT.Reg(asm.R2, dataEnd, "pass"), // runt: the kernel deals with it
	)
	for i := int16(0); i < nKeyDWords; i++ {
		g.emit(zero64(asm.RFP, stTmpl+8*i))
	}
	g.emit(
		// destination MAC and its multicast bit
		asm.LoadMem(asm.R1, data, 0, asm.Half),
		asm.StoreMem(asm.RFP, stTmpl+keyOffMAC, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, data, 2, asm.Word),
		asm.StoreMem(asm.RFP, stTmpl+keyOffMAC+2, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, data, 0, asm.Byte),
		asm.And.Imm(asm.R1, pktMcast),
		asm.StoreMem(asm.RFP, stFlags, asm.R1, asm.Word),
		asm.StoreImm(asm.RFP, stTmpl+keyOffVLAN, vlanNone, asm.Half),
		asm.LoadMem(asm.R1, data, 12, asm.Half),
		asm.Mov.Reg(l3, data),
		asm.Add.Imm(l3, 14),
		asm.JNE.Imm(asm.R1, be16(0x8100), "novlan"),
		asm.Mov.Reg(asm.R2, data),
		asm.Add.Imm(asm.R2, 18),
		asm.JGT.Reg(asm.R2, dataEnd, "pass"),
		asm.LoadMem(asm.R1, data, 14, asm.Half),
		asm.HostTo(asm.BE, asm.R1, asm.Half),
		asm.And.Imm(asm.R1, 0x0fff),
		asm.StoreMem(asm.RFP, stTmpl+keyOffVLAN, asm.R1, asm.Half),
		asm.LoadMem(asm.R1, data, 16, asm.Half),
		asm.Add.Imm(l3, 4),
		asm.StoreMem(asm.RFP, stTmpl+keyOffEtherType, asm.R1, asm.Half).WithSymbol("novlan"),
		asm.JEq.Imm(asm.R1, be16(0x0800), "ipv4"),
		asm.JEq.Imm(asm.R1, be16(0x86dd), "ipv6"),
		asm.Ja.Label("lookup"),

		// IPv4: IHL honoured; fragments keep only the protocol.
		asm.Mov.Reg(asm.R2, l3).WithSymbol("ipv4"),
		asm.Add.Imm(asm.R2, 20),
		asm.JGT.Reg(asm.R2, dataEnd, "lookup"),
		asm.LoadMem(asm.R1, l3, 9, asm.Byte),
		asm.StoreMem(asm.RFP, stTmpl+keyOffProto, asm.R1, asm.Byte),
		asm.LoadMem(asm.R2, l3, 6, asm.Half),
		asm.And.Imm(asm.R2, be16(0x3fff)),
		asm.JNE.Imm(asm.R2, 0, "lookup"),
		asm.LoadMem(asm.R2, l3, 0, asm.Byte),
		asm.And.Imm(asm.R2, 0x0f),
		asm.JLT.Imm(asm.R2, 5, "lookup"),
		asm.LoadMem(asm.R3, l3, 16, asm.Word),
		asm.StoreMem(asm.RFP, stTmpl+keyOffLAddr, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, l3, 12, asm.Word),
		asm.StoreMem(asm.RFP, stTmpl+keyOffRAddr, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.RFP, stFlags, asm.Word),
		asm.Or.Imm(asm.R3, pktIP),
		asm.StoreMem(asm.RFP, stFlags, asm.R3, asm.Word),
		asm.LSh.Imm(asm.R2, 2),
		asm.Add.Reg(l3, asm.R2),
		asm.Ja.Label("l4"),

		// IPv6: fixed header only; an extension header is "not UDP/TCP".
		asm.Mov.Reg(asm.R2, l3).WithSymbol("ipv6"),
		asm.Add.Imm(asm.R2, 40),
		asm.JGT.Reg(asm.R2, dataEnd, "lookup"),
		asm.LoadMem(asm.R1, l3, 6, asm.Byte),
		asm.StoreMem(asm.RFP, stTmpl+keyOffProto, asm.R1, asm.Byte),
		asm.LoadMem(asm.R3, l3, 24, asm.DWord),
		asm.StoreMem(asm.RFP, stTmpl+keyOffLAddr, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, l3, 32, asm.DWord),
		asm.StoreMem(asm.RFP, stTmpl+keyOffLAddr+8, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, l3, 8, asm.DWord),
		asm.StoreMem(asm.RFP, stTmpl+keyOffRAddr, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, l3, 16, asm.DWord),
		asm.StoreMem(asm.RFP, stTmpl+keyOffRAddr+8, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, asm.RFP, stFlags, asm.Word),
		asm.Or.Imm(asm.R3, pktIP),
		asm.StoreMem(asm.RFP, stFlags, asm.R3, asm.Word),
		asm.Add.Imm(l3, 40),

		// L4 ports (UDP and TCP share the layout).
		asm.JEq.Imm(asm.R1, int32(protoUDP), "ports").WithSymbol("l4"),
		asm.JEq.Imm(asm.R1, int32(protoTCP), "ports"),
		asm.Ja.Label("lookup"),
		asm.Mov.Reg(asm.R2, l3).WithSymbol("ports"),
		asm.Add.Imm(asm.R2, 4),
		asm.JGT.Reg(asm.R2, dataEnd, "lookup"),
		asm.LoadMem(asm.R3, l3, 0, asm.Half),
		asm.StoreMem(asm.RFP, stTmpl+keyOffRPort, asm.R3, asm.Half),
		asm.LoadMem(asm.R3, l3, 2, asm.Half),
		asm.StoreMem(asm.RFP, stTmpl+keyOffLPort, asm.R3, asm.Half),
		asm.LoadMem(asm.R3, asm.RFP, stFlags, asm.Word),
		asm.Or.Imm(asm.R3, pktL4),
		asm.StoreMem(asm.RFP, stFlags, asm.R3, asm.Word),
	)
	g.mark("lookup")
	for _, lv := range portLevels() {
		skip := g.label("skip")
		if lv.need != 0 {
			g.emit(
				asm.LoadMem(asm.R1, asm.RFP, stFlags, asm.Word),
				asm.And.Imm(asm.R1, int32(lv.need)),
				asm.JNE.Imm(asm.R1, int32(lv.need), skip),
			)
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
		lookup := func() {
			g.emit(
				mapPtr(asm.R1, m.filters),
				asm.Mov.Reg(asm.R2, asm.RFP),
				asm.Add.Imm(asm.R2, stKey),
				asm.FnMapLookupElem.Call(),
				asm.JNE.Imm(asm.R0, 0, "match"),
			)
		}
		if lv.vlan {
			g.emit(
				asm.LoadMem(asm.R1, asm.RFP, stTmpl+keyOffVLAN, asm.Half),
				asm.StoreMem(asm.RFP, stKey+keyOffVLAN, asm.R1, asm.Half),
			)
			lookup()
			g.emit(
				asm.LoadMem(asm.R1, asm.RFP, stTmpl+keyOffVLAN, asm.Half),
				asm.JEq.Imm(asm.R1, vlanNone, skip),
			)
		}
		g.emit(asm.StoreImm(asm.RFP, stKey+keyOffVLAN, vlanNone, asm.Half))
		lookup()
		g.mark(skip)
	}
	// No filter matched: block-kernel or pass.
	g.emit(
		asm.LoadMem(asm.R1, asm.RFP, stBlock, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, stFlags, asm.Word),
		asm.And.Imm(asm.R2, pktMcast),
		asm.RSh.Reg(asm.R1, asm.R2), // bit 0 = unicast blocked, bit 1 = multicast blocked
		asm.And.Imm(asm.R1, 1),
		asm.JNE.Imm(asm.R1, 0, "drop"),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpDrop).WithSymbol("drop"),
		asm.Return(),

		// R0 = *filterVal
		asm.LoadMem(asm.R7, asm.R0, valOffVI, asm.Word).WithSymbol("match"),
		asm.LoadMem(asm.R8, asm.R0, valOffMode, asm.Word),
		asm.LoadMem(asm.R9, asm.R0, valOffGroup, asm.Word),
		asm.LoadMem(asm.R1, asm.R0, valOffSlot, asm.Word),
		asm.StoreMem(asm.RFP, stScratch, asm.R1, asm.Word),
		mapPtr(asm.R1, m.hits),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stScratch),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "deliver"),
	)
	g.incU64(asm.R0, 0, asm.R1)
	g.mark("deliver")
	g.emit(
		asm.JEq.Imm(asm.R8, modeReplicate, "replicate"),
		// steal: to the VI's veth; a missing devmap entry drops (flags = fallback).
		mapPtr(asm.R1, m.viDev),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, xdpDrop),
		asm.FnRedirectMap.Call(),
		asm.JEq.Imm(asm.R0, xdpRedirect, "exit"),
		asm.StoreMem(asm.RFP, stScratch, asm.R7, asm.Word),
		mapPtr(asm.R1, m.stats),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stScratch),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
	)
	g.incU64(asm.R0, cntRxRedirectErrors, asm.R1)
	g.emit(
		asm.Ja.Label("drop"),
		asm.StoreMem(asm.RFP, stScratch, asm.R9, asm.Word).WithSymbol("replicate"),
		mapPtr(asm.R1, m.groups),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stScratch),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, bpfFBroadcast|bpfFExcludeIngress),
		asm.FnRedirectMap.Call(),
		asm.Return().WithSymbol("exit"),
	)
	return g.insns
}

// buildVIRxXDP generates the program on every VI's peer veth (v<N>p): count,
// then redirect into the VI's XSK; with no XSK in the xskmap the frame falls
// through to v<N>p's kernel stack (fallback XDP_PASS).
func buildVIRxXDP(m *maps) asm.Instructions {
	g := &gen{}
	g.emit(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R1, asm.R6, xdpMdIngressIfindex, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R1, asm.Word),
		mapPtr(asm.R1, m.ifToVI),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R7, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnXdpGetBuffLen.Call(),
		asm.Mov.Reg(asm.R8, asm.R0),
		mapPtr(asm.R1, m.stats),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "redirect"),
	)
	g.incU64(asm.R0, cntRxPackets, asm.R1)
	g.addU64(asm.R0, cntRxBytes, asm.R8, asm.R1)
	g.mark("redirect")
	g.captureHook(m, captureHookRegs{ctx: asm.R6, vi: asm.R7, length: asm.R8, save: asm.R9}, -8, rxStCapMeta, CaptureRX)
	g.emit(
		mapPtr(asm.R1, m.xsks),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, xdpPass),
		asm.FnRedirectMap.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	)
	return g.insns
}

// Stack layout of the VI TX program.
const (
	txStIfindex = -8
	txStVI      = -16
	txStLen     = -24
	txStKey     = -48 // srcKey: vi u32, family u32, addr [16]
	txStCapMeta = -72 // capture metadata (capMetaSize bytes)
)

// rxStCapMeta is where the VI RX program builds capture metadata.
const rxStCapMeta = -32

// buildVITxXDP generates the program on every VI's own veth (v<N>): frames
// the pod transmits arrive here; spoofed ones are dropped and counted, the
// rest are redirected out of the port.
func buildVITxXDP(m *maps) asm.Instructions {
	g := &gen{}
	const (
		ctx  = asm.R6
		vi   = asm.R7
		data = asm.R8
		cfg  = asm.R9
		end  = asm.R5
		l3   = asm.R4
	)
	g.emit(
		asm.Mov.Reg(ctx, asm.R1),
		asm.LoadMem(asm.R1, ctx, xdpMdIngressIfindex, asm.Word),
		asm.StoreMem(asm.RFP, txStIfindex, asm.R1, asm.Word),
		mapPtr(asm.R1, m.txCfg),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, txStIfindex),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"), // not a VI veth (cannot happen unless detached)
		asm.Mov.Reg(cfg, asm.R0),
		asm.LoadMem(vi, cfg, txCfgOffVI, asm.Word),
		asm.StoreMem(asm.RFP, txStVI, vi, asm.Word),
		asm.Mov.Reg(asm.R1, ctx),
		asm.FnXdpGetBuffLen.Call(),
		asm.StoreMem(asm.RFP, txStLen, asm.R0, asm.DWord),
		asm.LoadMem(data, ctx, xdpMdData, asm.Word),
		asm.LoadMem(end, ctx, xdpMdDataEnd, asm.Word),
		asm.Mov.Reg(asm.R2, data),
		asm.Add.Imm(asm.R2, 14),
		asm.JGT.Reg(asm.R2, end, "spoof"),
		// source MAC
		asm.LoadMem(asm.R1, data, 6, asm.Word),
		asm.LoadMem(asm.R2, cfg, 0, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, "spoof"),
		asm.LoadMem(asm.R1, data, 10, asm.Half),
		asm.LoadMem(asm.R2, cfg, 4, asm.Half),
		asm.JNE.Reg(asm.R1, asm.R2, "spoof"),
		asm.StoreMem(asm.RFP, txStKey, vi, asm.Word),
		zero64(asm.RFP, txStKey+8),
		zero64(asm.RFP, txStKey+16),
		asm.LoadMem(asm.R1, data, 12, asm.Half),
		asm.Mov.Reg(l3, data),
		asm.Add.Imm(l3, 14),
		asm.JNE.Imm(asm.R1, be16(0x8100), "novlan"),
		asm.Mov.Reg(asm.R2, data),
		asm.Add.Imm(asm.R2, 18),
		asm.JGT.Reg(asm.R2, end, "spoof"),
		asm.LoadMem(asm.R1, data, 16, asm.Half),
		asm.Add.Imm(l3, 4),
		asm.JEq.Imm(asm.R1, be16(0x0800), "ipv4").WithSymbol("novlan"),
		asm.JEq.Imm(asm.R1, be16(0x86dd), "ipv6"),
		asm.JEq.Imm(asm.R1, be16(0x0806), "arp"),
		asm.Ja.Label("spoof"),

		asm.Mov.Reg(asm.R2, l3).WithSymbol("ipv4"),
		asm.Add.Imm(asm.R2, 20),
		asm.JGT.Reg(asm.R2, end, "spoof"),
		asm.LoadMem(asm.R3, l3, 12, asm.Word),
		asm.StoreMem(asm.RFP, txStKey+8, asm.R3, asm.Word),
		asm.StoreImm(asm.RFP, txStKey+4, 4, asm.Word),
		asm.Ja.Label("check"),

		asm.Mov.Reg(asm.R2, l3).WithSymbol("ipv6"),
		asm.Add.Imm(asm.R2, 40),
		asm.JGT.Reg(asm.R2, end, "spoof"),
		asm.LoadMem(asm.R3, l3, 8, asm.DWord),
		asm.StoreMem(asm.RFP, txStKey+8, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, l3, 16, asm.DWord),
		asm.StoreMem(asm.RFP, txStKey+16, asm.R3, asm.DWord),
		asm.StoreImm(asm.RFP, txStKey+4, 6, asm.Word),
		asm.Ja.Label("check"),

		// ARP for IPv4 over Ethernet: sender hardware address = SrcMAC,
		// sender protocol address in the allowed set.
		asm.Mov.Reg(asm.R2, l3).WithSymbol("arp"),
		asm.Add.Imm(asm.R2, 28),
		asm.JGT.Reg(asm.R2, end, "spoof"),
		asm.LoadMem(asm.R1, l3, 8, asm.Word),
		asm.LoadMem(asm.R2, cfg, 0, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, "spoof"),
		asm.LoadMem(asm.R1, l3, 12, asm.Half),
		asm.LoadMem(asm.R2, cfg, 4, asm.Half),
		asm.JNE.Reg(asm.R1, asm.R2, "spoof"),
		asm.LoadMem(asm.R3, l3, 14, asm.Word),
		asm.StoreMem(asm.RFP, txStKey+8, asm.R3, asm.Word),
		asm.StoreImm(asm.RFP, txStKey+4, 4, asm.Word),

		mapPtr(asm.R1, m.allowed).WithSymbol("check"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, txStKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "spoof"),
		asm.LoadMem(data, asm.RFP, txStLen, asm.DWord), // data and cfg are free from here
	)
	g.captureHook(m, captureHookRegs{ctx: ctx, vi: vi, length: data, save: cfg}, txStVI, txStCapMeta, CaptureTX)
	g.emit(
		mapPtr(asm.R1, m.stats),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, txStVI),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
	)
	g.incU64(asm.R0, cntTxPackets, asm.R1)
	g.emit(asm.LoadMem(asm.R2, asm.RFP, txStLen, asm.DWord))
	g.addU64(asm.R0, cntTxBytes, asm.R2, asm.R1)
	g.mark("out")
	g.emit(
		mapPtr(asm.R1, m.portDev),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, xdpDrop),
		asm.FnRedirectMap.Call(),
		asm.Return(),

		mapPtr(asm.R1, m.stats).WithSymbol("spoof"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, txStVI),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
	)
	g.incU64(asm.R0, cntTxSpoofDrops, asm.R1)
	g.mark("drop")
	g.emit(
		asm.Mov.Imm(asm.R0, xdpDrop),
		asm.Return(),
	)
	return g.insns
}

// buildSniffTC generates the TCX ingress program on the port: when a sniff
// filter is installed, clone every frame the kernel receives to the sniffing
// VI's veth and let the kernel carry on.
func buildSniffTC(m *maps) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -8, 0, asm.Word),
		mapPtr(asm.R1, m.sniff),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		asm.LoadMem(asm.R7, asm.R0, sniffOffIfindex, asm.Word),
		asm.JEq.Imm(asm.R7, 0, "next"),
		asm.LoadMem(asm.R1, asm.R0, sniffOffPromisc, asm.Word),
		asm.JNE.Imm(asm.R1, 0, "clone"),
		asm.LoadMem(asm.R1, asm.R6, skbPktType, asm.Word),
		asm.JEq.Imm(asm.R1, packetOtherhost, "next"),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("clone"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnSkbPullData.Call(),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnCloneRedirect.Call(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("next"),
		asm.Return(),
	}
}

// passXDP is XDP_PASS.
func passXDP() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()}
}

// license is GPL-compatible so every helper is usable.
const license = "Dual MIT/GPL"

func loadProg(name string, typ ebpf.ProgramType, insns asm.Instructions) (*ebpf.Program, error) {
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Name:         name,
		Type:         typ,
		Instructions: insns,
		License:      license,
	}, ebpf.ProgramOptions{LogSizeStart: 1 << 20})
	if err != nil {
		return nil, fmt.Errorf("load program %s: %w", name, err)
	}
	return p, nil
}

// progs are the four programs a port uses.
type progs struct {
	port, viRx, viTx, sniff *ebpf.Program
}

func loadProgs(m *maps) (*progs, error) {
	var p progs
	var err error
	if p.port, err = loadProg("efvi_port", ebpf.XDP, buildPortXDP(m)); err != nil {
		return nil, err
	}
	if p.viRx, err = loadProg("efvi_vi_rx", ebpf.XDP, buildVIRxXDP(m)); err != nil {
		p.close()
		return nil, err
	}
	if p.viTx, err = loadProg("efvi_vi_tx", ebpf.XDP, buildVITxXDP(m)); err != nil {
		p.close()
		return nil, err
	}
	if p.sniff, err = loadProg("efvi_sniff", ebpf.SchedCLS, buildSniffTC(m)); err != nil {
		p.close()
		return nil, err
	}
	return &p, nil
}

func (p *progs) close() {
	for _, q := range []*ebpf.Program{p.port, p.viRx, p.viTx, p.sniff} {
		if q != nil {
			q.Close()
		}
	}
}
