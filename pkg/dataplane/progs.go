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

// Building blocks shared by the programs. Each names a step a reader can
// follow; registers are the caller's (documented per block), scratch
// registers R0-R5 are clobbered.

// lookup is R0 = bpf_map_lookup_elem(m, fp+keyOff); a NULL result jumps to
// miss.
func (g *gen) lookup(m *ebpf.Map, keyOff int16, miss string) {
	g.emit(
		mapPtr(asm.R1, m),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(keyOff)),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, miss),
	)
}

// lookupHit is R0 = bpf_map_lookup_elem(m, fp+keyOff); a hit jumps to hit.
func (g *gen) lookupHit(m *ebpf.Map, keyOff int16, hit string) {
	g.emit(
		mapPtr(asm.R1, m),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(keyOff)),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, hit),
	)
}

// need jumps to short unless n bytes from ptr are inside the frame (end is
// data_end). Clobbers R2.
func (g *gen) need(ptr asm.Register, n int32, end asm.Register, short string) {
	g.emit(
		asm.Mov.Reg(asm.R2, ptr),
		asm.Add.Imm(asm.R2, n),
		asm.JGT.Reg(asm.R2, end, short),
	)
}

// l3 skips the Ethernet header and at most one 802.1Q tag: l3 = start of
// the L3 header, R1 = its EtherType (raw load). The caller has checked 14
// bytes; a truncated tag jumps to short.
func (g *gen) l3(data, end, l3 asm.Register, short string) {
	untagged := g.label("untagged")
	g.emit(
		asm.Mov.Reg(l3, data),
		asm.Add.Imm(l3, 14),
		asm.LoadMem(asm.R1, data, 12, asm.Half),
		asm.JNE.Imm(asm.R1, be16(0x8100), untagged),
	)
	g.need(data, 18, end, short)
	g.emit(
		asm.LoadMem(asm.R1, data, 16, asm.Half),
		asm.Add.Imm(l3, 4),
	)
	g.mark(untagged)
}

// frameLen is dst = data_end - data: the frame length (programs are loaded
// without multi-buffer support, so frames are linear).
func (g *gen) frameLen(dst, data, end asm.Register) {
	g.emit(
		asm.Mov.Reg(dst, end),
		asm.Sub.Reg(dst, data),
	)
}

// count adds one packet of length bytes to the stats value of the VI whose
// id is the u32 at fp+keyOff (PERCPU_ARRAY: no atomics).
func (g *gen) count(m *maps, keyOff, packets, bytes int16, length asm.Register) {
	skip := g.label("nostats")
	g.lookup(m.stats, keyOff, skip)
	g.incU64(asm.R0, packets, asm.R1)
	g.addU64(asm.R0, bytes, length, asm.R1)
	g.mark(skip)
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

// progs are the port's shared programs; each VI has its own (viProgs).
type progs struct {
	port, sniff *ebpf.Program
}

func loadProgs(m *maps) (*progs, error) {
	var p progs
	var err error
	if p.port, err = loadProg("efvi_port", ebpf.XDP, buildPortXDP(m)); err != nil {
		return nil, err
	}
	if p.sniff, err = loadProg("efvi_sniff", ebpf.SchedCLS, buildSniffTC(m)); err != nil {
		p.close()
		return nil, err
	}
	return &p, nil
}

func (p *progs) close() {
	for _, q := range []*ebpf.Program{p.port, p.sniff} {
		if q != nil {
			q.Close()
		}
	}
}

// viProgs are one VI's RX and TX programs.
type viProgs struct {
	rx, tx *ebpf.Program
}

func loadVIRx(m *maps, c viConsts) (*ebpf.Program, error) {
	return loadProg("efvi_vi_rx", ebpf.XDP, buildVIRxXDP(m, c))
}

func loadVITx(m *maps, c viConsts) (*ebpf.Program, error) {
	return loadProg("efvi_vi_tx", ebpf.XDP, buildVITxXDP(m, c))
}

func loadVIProgs(m *maps, c viConsts) (viProgs, error) {
	rx, err := loadVIRx(m, c)
	if err != nil {
		return viProgs{}, err
	}
	tx, err := loadVITx(m, c)
	if err != nil {
		rx.Close()
		return viProgs{}, err
	}
	return viProgs{rx: rx, tx: tx}, nil
}

func (p *viProgs) close() {
	for _, q := range []*ebpf.Program{p.rx, p.tx} {
		if q != nil {
			q.Close()
		}
	}
	*p = viProgs{}
}
