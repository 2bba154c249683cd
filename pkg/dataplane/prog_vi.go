package dataplane

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf/asm"
)

// Per-VI programs. Each VI gets its own RX and TX program built with its
// constants (id, source MAC, up to maxInlineSrcs IPv4 sources), so the hot
// path does no lookup of what never changes per VI; the TX program is
// rebuilt and swapped in with a link update (atomic for frames in flight)
// when the VI's sources change. IPv6 sources, and IPv4 ones beyond
// maxInlineSrcs, are checked in the allowed map, as before.

// maxInlineSrcs is how many IPv4 sources a TX program compares inline.
const maxInlineSrcs = 4

// viConsts are the per-VI values baked into its programs.
type viConsts struct {
	vi  uint32
	mac [6]byte
	// ipv4 are the inline IPv4 sources; ipv4Map says IPv4 sources are
	// checked in the allowed map instead (more than maxInlineSrcs).
	ipv4    [][4]byte
	ipv4Map bool
}

func newVIConsts(vi uint32, mac [6]byte, srcs []netip.Addr) viConsts {
	c := viConsts{vi: vi, mac: mac}
	for _, a := range srcs {
		if a = a.Unmap(); a.Is4() {
			c.ipv4 = append(c.ipv4, a.As4())
		}
	}
	if len(c.ipv4) > maxInlineSrcs {
		c.ipv4, c.ipv4Map = nil, true
	}
	return c
}

func (c viConsts) equal(o viConsts) bool {
	return c.vi == o.vi && c.mac == o.mac && c.ipv4Map == o.ipv4Map && slices.Equal(c.ipv4, o.ipv4)
}

// ne32 is the native-order value a 32-bit load of b yields.
func ne32(b []byte) int32 { return int32(binary.NativeEndian.Uint32(b)) }

// ne16 is the native-order value a 16-bit load of b yields.
func ne16(b []byte) int32 { return int32(binary.NativeEndian.Uint16(b)) }

// Stack slots of the VI programs.
const (
	viStID      = -8  // u32 VI id: the key of stats and capture
	viStSrcKey  = -32 // srcKey (24 bytes) for the allowed map
	viStCapMeta = -56 // capture metadata (capMetaSize bytes)
)

// viRegs: the registers of both VI programs (callee-saved, they survive
// helper calls).
const (
	viCtx  = asm.R6
	viData = asm.R7
	viEnd  = asm.R8
	viL3   = asm.R9
)

// buildVIRxXDP generates VI c.vi's program on its peer veth (v<N>p): count,
// then redirect into the VI's XSK; with no XSK in the xskmap the frame falls
// through to v<N>p's kernel stack (fallback XDP_PASS). The program is loaded
// without multi-buffer support, so every frame is linear and its length is
// data_end - data.
func buildVIRxXDP(m *maps, c viConsts) asm.Instructions {
	g := &gen{}
	g.emit(
		asm.Mov.Reg(viCtx, asm.R1),
		asm.LoadMem(viData, viCtx, xdpMdData, asm.Word),
		asm.LoadMem(viEnd, viCtx, xdpMdDataEnd, asm.Word),
	)
	g.frameLen(viL3, viData, viEnd)
	g.emit(asm.StoreImm(asm.RFP, viStID, int64(c.vi), asm.Word))
	g.count(m, viStID, cntRxPackets, cntRxBytes, viL3)
	g.emit(asm.Mov.Imm(viData, int32(c.vi)))
	g.captureHook(m, captureHookRegs{ctx: viCtx, vi: viData, length: viL3, save: viEnd}, viStID, viStCapMeta, CaptureRX)
	g.emit(
		mapPtr(asm.R1, m.xsks),
		asm.Mov.Imm(asm.R2, int32(c.vi)),
		asm.Mov.Imm(asm.R3, xdpPass),
		asm.FnRedirectMap.Call(),
		asm.Return(),
	)
	return g.insns
}

// buildVITxXDP generates VI c.vi's program on its own veth (v<N>): frames the
// pod transmits arrive here. Source MAC must be the VI's; IPv4/IPv6 source
// one of its IPs; ARP must carry the VI's MAC and one of its IPv4 addresses
// as sender; one VLAN tag may precede these. Spoofed frames are dropped and
// counted, the rest redirected out of the port.
func buildVITxXDP(m *maps, c viConsts) asm.Instructions {
	g := &gen{}
	g.emit(
		asm.Mov.Reg(viCtx, asm.R1),
		asm.StoreImm(asm.RFP, viStID, int64(c.vi), asm.Word),
		asm.LoadMem(viData, viCtx, xdpMdData, asm.Word),
		asm.LoadMem(viEnd, viCtx, xdpMdDataEnd, asm.Word),
	)
	g.need(viData, 14, viEnd, "spoof")
	g.sourceMAC(c, viData, 6, "spoof")
	g.l3(viData, viEnd, viL3, "spoof")
	g.emit(
		asm.JEq.Imm(asm.R1, be16(0x0800), "ipv4"),
		asm.JEq.Imm(asm.R1, be16(0x86dd), "ipv6"),
		asm.JEq.Imm(asm.R1, be16(0x0806), "arp"),
		asm.Ja.Label("spoof"),
	)
	// IPv4: the source address.
	g.mark("ipv4")
	g.need(viL3, 20, viEnd, "spoof")
	g.emit(asm.LoadMem(asm.R1, viL3, 12, asm.Word))
	g.sourceIPv4(m, c, "ok", "spoof")
	// IPv6: the source address, in the allowed map.
	g.mark("ipv6")
	g.need(viL3, 40, viEnd, "spoof")
	g.emit(
		asm.StoreImm(asm.RFP, viStSrcKey, int64(c.vi), asm.Word),
		asm.StoreImm(asm.RFP, viStSrcKey+4, 6, asm.Word),
		asm.LoadMem(asm.R1, viL3, 8, asm.DWord),
		asm.StoreMem(asm.RFP, viStSrcKey+8, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, viL3, 16, asm.DWord),
		asm.StoreMem(asm.RFP, viStSrcKey+16, asm.R1, asm.DWord),
	)
	g.lookup(m.allowed, viStSrcKey, "spoof")
	g.emit(asm.Ja.Label("ok"))
	// ARP for IPv4 over Ethernet: sender hardware address = the VI's MAC,
	// sender protocol address one of its IPv4 sources.
	g.mark("arp")
	g.need(viL3, 28, viEnd, "spoof")
	g.sourceMAC(c, viL3, 8, "spoof")
	g.emit(asm.LoadMem(asm.R1, viL3, 14, asm.Word))
	g.sourceIPv4(m, c, "ok", "spoof")

	g.mark("ok")
	g.frameLen(viL3, viData, viEnd)
	g.count(m, viStID, cntTxPackets, cntTxBytes, viL3)
	g.emit(asm.Mov.Imm(viData, int32(c.vi)))
	g.captureHook(m, captureHookRegs{ctx: viCtx, vi: viData, length: viL3, save: viEnd}, viStID, viStCapMeta, CaptureTX)
	g.emit(
		mapPtr(asm.R1, m.portDev),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Imm(asm.R3, xdpDrop),
		asm.FnRedirectMap.Call(),
		asm.Return(),
	)
	g.mark("spoof")
	g.lookup(m.stats, viStID, "drop")
	g.incU64(asm.R0, cntTxSpoofDrops, asm.R1)
	g.mark("drop")
	g.emit(asm.Mov.Imm(asm.R0, xdpDrop), asm.Return())
	return g.insns
}

// sourceMAC jumps to bad unless the 6 bytes at ptr+off are c.mac.
func (g *gen) sourceMAC(c viConsts, ptr asm.Register, off int16, bad string) {
	g.emit(
		asm.LoadMem(asm.R1, ptr, off, asm.Word),
		asm.JNE.Imm32(asm.R1, ne32(c.mac[0:4]), bad),
		asm.LoadMem(asm.R1, ptr, off+4, asm.Half),
		asm.JNE.Imm32(asm.R1, ne16(c.mac[4:6]), bad),
	)
}

// sourceIPv4 checks the IPv4 address in R1 (a raw 32-bit load) against
// the VI's IPv4 sources: inline compares, or the allowed map.
func (g *gen) sourceIPv4(m *maps, c viConsts, ok, bad string) {
	if !c.ipv4Map {
		for _, a := range c.ipv4 {
			g.emit(asm.JEq.Imm32(asm.R1, ne32(a[:]), ok))
		}
		g.emit(asm.Ja.Label(bad))
		return
	}
	g.emit(
		asm.StoreImm(asm.RFP, viStSrcKey, int64(c.vi), asm.Word),
		asm.StoreImm(asm.RFP, viStSrcKey+4, 4, asm.Word),
		asm.StoreMem(asm.RFP, viStSrcKey+8, asm.R1, asm.Word),
		asm.StoreImm(asm.RFP, viStSrcKey+12, 0, asm.Word),
		zero64(asm.RFP, viStSrcKey+16),
	)
	g.lookup(m.allowed, viStSrcKey, bad)
	g.emit(asm.Ja.Label(ok))
}
