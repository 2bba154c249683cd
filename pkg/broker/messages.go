package broker

import (
	"fmt"
	"net/netip"
	"slices"
	"syscall"
)

// Message is one frame payload. MarshalBinary validates and encodes;
// UnmarshalBinary decodes strictly (lengths, ranges, ids, UTF-8, reserved
// fields zero, no trailing bytes) and returns an *Error with EINVAL on any
// violation.
type Message interface {
	Type() MsgType
	MarshalBinary() ([]byte, error)
	UnmarshalBinary([]byte) error
}

// Ids handed out by the server. 0 is never a valid id.
type (
	PDID         uint32
	MemRegID     uint32
	VIID         uint32
	FilterCookie uint64
)

// Caps is a capability bit set exchanged in HELLO. Both sides use the
// intersection of what they sent.
type Caps uint64

// Capability bits.
const (
	CapAFXDP      Caps = 1 << 0 // VIs are AF_XDP sockets (software backend): ALLOC_VI passes an XSK fd
	CapEFVI       Caps = 1 << 1 // VIs are Solarflare ef_vi resources (hardware backend)
	CapFilters    Caps = 1 << 2 // FILTER_ADD / FILTER_DEL at run time
	CapStats      Caps = 1 << 3 // STATS
	CapNeedWakeup Caps = 1 << 4 // XSKs are bound with XDP_USE_NEED_WAKEUP
)

// StatsReset asks STATS to reset the counters after reading (ef_vi do_reset).
const StatsReset uint32 = 1

func idErr(msg, field string) *Error {
	return Errorf(syscall.EINVAL, "%s: field %s: id 0 is not valid", msg, field)
}

func checkCap(msg, field string, v int32) error {
	if v < -1 || v > MaxRingCap {
		return Errorf(syscall.EINVAL, "%s: field %s: capacity %d outside -1 (default), 0 (none) .. %d", msg, field, v, MaxRingCap)
	}
	return nil
}

func isPow2(v uint32) bool { return v != 0 && v&(v-1) == 0 }

func marshalWith(m Message, check func() error, body func(*enc)) ([]byte, error) {
	if err := check(); err != nil {
		return nil, fmt.Errorf("encode %v: %w", m.Type(), err)
	}
	var e enc
	body(&e)
	if len(e.b) > MaxPayloadSize {
		return nil, fmt.Errorf("encode %v: payload %d bytes exceeds %d", m.Type(), len(e.b), MaxPayloadSize)
	}
	return e.b, nil
}

// ---- HELLO ----

// HelloRequest opens a session.
//
//	version u16 | reserved u16 = 0 | caps u64 | name str (0..64)
type HelloRequest struct {
	Version uint16 // highest protocol version the client speaks (>= 1)
	Caps    Caps
	Name    string // free-form client name for the agent's logs
}

func (*HelloRequest) Type() MsgType { return TypeHello }

func (m *HelloRequest) check() error {
	if m.Version == 0 {
		return Errorf(syscall.EINVAL, "HELLO: field version: 0 is not a protocol version")
	}
	return nil
}

func (m *HelloRequest) MarshalBinary() ([]byte, error) {
	if err := checkStr("HELLO", "name", m.Name, 0, MaxClientName); err != nil {
		return nil, err
	}
	return marshalWith(m, m.check, func(e *enc) { e.u16(m.Version); e.u16(0); e.u64(uint64(m.Caps)); e.str(m.Name) })
}

func (m *HelloRequest) UnmarshalBinary(p []byte) error {
	d := newDec("HELLO", p)
	v := HelloRequest{Version: d.u16("version")}
	d.zero16("reserved")
	v.Caps = Caps(d.u64("caps"))
	v.Name = d.str("name", 0, MaxClientName)
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// HelloReply tells the client what it was given and what it needs to build frames.
//
//	version u16 | reserved u16 = 0 | caps u64 | mtu u32 | mac [6] | reserved u16 = 0 |
//	pool str (1..253) | ifname str (1..15) |
//	ndev u16 (0..64) | ndev × device str (1..128) |
//	naddr u16 (0..16) | naddr × (family u8 (4|6) | 4 or 16 address bytes)
type HelloReply struct {
	Version uint16 // protocol version the server chose (<= the client's)
	Caps    Caps
	MTU     uint32 // port MTU (68..65535)
	MAC     [6]byte
	Pool    string       // resource pool, e.g. "eth1"
	IfName  string       // port interface name on the node
	Devices []string     // allocated device (VI slot) ids, as in EFVI_DEVICES
	Addrs   []netip.Addr // the pod's own addresses: the only sources TX may use
}

func (*HelloReply) Type() MsgType { return TypeHello.Reply() }

func (m *HelloReply) check() error {
	const n = "HELLO_OK"
	if m.Version == 0 {
		return Errorf(syscall.EINVAL, "%s: field version: 0 is not a protocol version", n)
	}
	if m.MTU < 68 || m.MTU > 65535 {
		return Errorf(syscall.EINVAL, "%s: field mtu: %d outside 68..65535", n, m.MTU)
	}
	if len(m.Devices) > MaxDevices {
		return Errorf(syscall.EINVAL, "%s: field devices: %d entries, limit %d", n, len(m.Devices), MaxDevices)
	}
	if len(m.Addrs) > MaxAddrs {
		return Errorf(syscall.EINVAL, "%s: field addrs: %d entries, limit %d", n, len(m.Addrs), MaxAddrs)
	}
	for i, a := range m.Addrs {
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
			return Errorf(syscall.EINVAL, "%s: field addrs[%d]: %v is not a plain IPv4 or IPv6 address", n, i, a)
		}
	}
	return nil
}

func (m *HelloReply) MarshalBinary() ([]byte, error) {
	const n = "HELLO_OK"
	if err := checkStr(n, "pool", m.Pool, 1, MaxPoolName); err != nil {
		return nil, err
	}
	if err := checkStr(n, "ifname", m.IfName, 1, MaxIfName); err != nil {
		return nil, err
	}
	for i, d := range m.Devices {
		if err := checkStr(n, fmt.Sprintf("devices[%d]", i), d, 1, MaxDeviceID); err != nil {
			return nil, err
		}
	}
	return marshalWith(m, m.check, func(e *enc) {
		e.u16(m.Version)
		e.u16(0)
		e.u64(uint64(m.Caps))
		e.u32(m.MTU)
		e.raw(m.MAC[:])
		e.u16(0)
		e.str(m.Pool)
		e.str(m.IfName)
		e.u16(uint16(len(m.Devices)))
		for _, d := range m.Devices {
			e.str(d)
		}
		e.u16(uint16(len(m.Addrs)))
		for _, a := range m.Addrs {
			if a.Is4() {
				e.u8(4)
			} else {
				e.u8(6)
			}
			e.raw(a.AsSlice())
		}
	})
}

func (m *HelloReply) UnmarshalBinary(p []byte) error {
	d := newDec("HELLO_OK", p)
	v := HelloReply{Version: d.u16("version")}
	d.zero16("reserved")
	v.Caps = Caps(d.u64("caps"))
	v.MTU = d.u32("mtu")
	copy(v.MAC[:], d.take("mac", 6))
	d.zero16("reserved2")
	v.Pool = d.str("pool", 1, MaxPoolName)
	v.IfName = d.str("ifname", 1, MaxIfName)
	if n := d.count("devices", MaxDevices, 3); n > 0 {
		v.Devices = make([]string, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			v.Devices = append(v.Devices, d.str(fmt.Sprintf("devices[%d]", i), 1, MaxDeviceID))
		}
	}
	if n := d.count("addrs", MaxAddrs, 5); n > 0 {
		v.Addrs = make([]netip.Addr, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			f := fmt.Sprintf("addrs[%d]", i)
			switch fam := d.u8(f + " family"); fam {
			case 4:
				var a [4]byte
				copy(a[:], d.take(f, 4))
				v.Addrs = append(v.Addrs, netip.AddrFrom4(a))
			case 6:
				var a [16]byte
				copy(a[:], d.take(f, 16))
				v.Addrs = append(v.Addrs, netip.AddrFrom16(a))
			default:
				d.fail(f, "family %d, want 4 or 6", fam)
			}
		}
	}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// ---- ALLOC_PD ----

// AllocPDRequest allocates a protection domain (ef_pd_alloc).
//
//	flags u32 (enum ef_pd_flags, interpreted by the agent)
type AllocPDRequest struct{ Flags uint32 }

func (*AllocPDRequest) Type() MsgType { return TypeAllocPD }

func (m *AllocPDRequest) MarshalBinary() ([]byte, error) {
	return marshalWith(m, func() error { return nil }, func(e *enc) { e.u32(m.Flags) })
}

func (m *AllocPDRequest) UnmarshalBinary(p []byte) error {
	d := newDec("ALLOC_PD", p)
	v := AllocPDRequest{Flags: d.u32("flags")}
	if err := d.end(); err != nil {
		return err
	}
	*m = v
	return nil
}

// AllocPDReply carries the new PD's id.
//
//	pd u32 (!= 0)
type AllocPDReply struct{ PD PDID }

func (*AllocPDReply) Type() MsgType { return TypeAllocPD.Reply() }

func (m *AllocPDReply) check() error {
	if m.PD == 0 {
		return idErr("ALLOC_PD_OK", "pd")
	}
	return nil
}

func (m *AllocPDReply) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) { e.u32(uint32(m.PD)) })
}

func (m *AllocPDReply) UnmarshalBinary(p []byte) error {
	d := newDec("ALLOC_PD_OK", p)
	v := AllocPDReply{PD: PDID(d.u32("pd"))}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// ---- REG_MEM ----

// RegMemRequest asks the agent for packet memory registered with a PD
// (ef_memreg_alloc). The agent creates it (a sealed memfd) and passes it.
//
//	pd u32 (!= 0) | flags u32 = 0 | size u64 (bytes; a multiple of 2048, 2048..64 GiB)
type RegMemRequest struct {
	PD    PDID
	Flags uint32 // reserved, must be 0
	Size  uint64
}

func (*RegMemRequest) Type() MsgType { return TypeRegMem }

func (m *RegMemRequest) check() error {
	if m.PD == 0 {
		return idErr("REG_MEM", "pd")
	}
	if m.Flags != 0 {
		return Errorf(syscall.EINVAL, "REG_MEM: field flags: %#x, no flags are defined", m.Flags)
	}
	if m.Size == 0 || m.Size%BufSize != 0 || m.Size > MaxRegMemBytes {
		return Errorf(syscall.EINVAL, "REG_MEM: field size: %d bytes, want a multiple of %d in %d..%d", m.Size, BufSize, BufSize, uint64(MaxRegMemBytes))
	}
	return nil
}

func (m *RegMemRequest) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) { e.u32(uint32(m.PD)); e.u32(m.Flags); e.u64(m.Size) })
}

func (m *RegMemRequest) UnmarshalBinary(p []byte) error {
	d := newDec("REG_MEM", p)
	v := RegMemRequest{PD: PDID(d.u32("pd")), Flags: d.u32("flags"), Size: d.u64("size")}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// RegMemReply carries the memory region's id and geometry; the frame carries
// exactly one fd: the memory (a memfd to mmap, offset 0, Size bytes).
//
//	memreg u32 (!= 0) | chunk u32 (power of 2, 2048..65536) | size u64 (multiple of chunk, <= 64 GiB)
type RegMemReply struct {
	MemReg    MemRegID
	ChunkSize uint32 // packet buffer size the region is carved into
	Size      uint64 // actual size (the agent may round the request up)
}

func (*RegMemReply) Type() MsgType { return TypeRegMem.Reply() }

func (m *RegMemReply) check() error {
	const n = "REG_MEM_OK"
	if m.MemReg == 0 {
		return idErr(n, "memreg")
	}
	if !isPow2(m.ChunkSize) || m.ChunkSize < MinFrameSize || m.ChunkSize > MaxFrameSize {
		return Errorf(syscall.EINVAL, "%s: field chunk: %d, want a power of 2 in %d..%d", n, m.ChunkSize, MinFrameSize, MaxFrameSize)
	}
	if m.Size == 0 || m.Size%uint64(m.ChunkSize) != 0 || m.Size > MaxRegMemBytes {
		return Errorf(syscall.EINVAL, "%s: field size: %d, want a non-zero multiple of %d up to %d", n, m.Size, m.ChunkSize, uint64(MaxRegMemBytes))
	}
	return nil
}

func (m *RegMemReply) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) { e.u32(uint32(m.MemReg)); e.u32(m.ChunkSize); e.u64(m.Size) })
}

func (m *RegMemReply) UnmarshalBinary(p []byte) error {
	d := newDec("REG_MEM_OK", p)
	v := RegMemReply{MemReg: MemRegID(d.u32("memreg")), ChunkSize: d.u32("chunk"), Size: d.u64("size")}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// ---- ALLOC_VI ----

// AllocVIRequest allocates a VI on a PD using a registered memory region as
// its packet memory (ef_vi_alloc_from_pd). Capacities follow ef_vi: -1 asks for
// the default, 0 for no such ring.
//
//	pd u32 (!= 0) | memreg u32 (!= 0) | evq i32 | rxq i32 | txq i32 (each -1..65536) | flags u32 (enum ef_vi_flags)
type AllocVIRequest struct {
	PD     PDID
	MemReg MemRegID
	EvqCap int32
	RxqCap int32
	TxqCap int32
	Flags  uint32
}

func (*AllocVIRequest) Type() MsgType { return TypeAllocVI }

func (m *AllocVIRequest) check() error {
	if m.PD == 0 {
		return idErr("ALLOC_VI", "pd")
	}
	if m.MemReg == 0 {
		return idErr("ALLOC_VI", "memreg")
	}
	for _, c := range []struct {
		f string
		v int32
	}{{"evq", m.EvqCap}, {"rxq", m.RxqCap}, {"txq", m.TxqCap}} {
		if err := checkCap("ALLOC_VI", c.f, c.v); err != nil {
			return err
		}
	}
	if m.RxqCap == 0 && m.TxqCap == 0 {
		return Errorf(syscall.EINVAL, "ALLOC_VI: fields rxq, txq: both 0, a VI needs an RX or a TX ring")
	}
	return nil
}

func (m *AllocVIRequest) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) {
		e.u32(uint32(m.PD))
		e.u32(uint32(m.MemReg))
		e.i32(m.EvqCap)
		e.i32(m.RxqCap)
		e.i32(m.TxqCap)
		e.u32(m.Flags)
	})
}

func (m *AllocVIRequest) UnmarshalBinary(p []byte) error {
	d := newDec("ALLOC_VI", p)
	v := AllocVIRequest{PD: PDID(d.u32("pd")), MemReg: MemRegID(d.u32("memreg")),
		EvqCap: d.i32("evq"), RxqCap: d.i32("rxq"), TxqCap: d.i32("txq"), Flags: d.u32("flags")}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// Geometry describes the AF_XDP socket an ALLOC_VI reply passes: what the SDK
// needs to mmap and drive its rings (offsets come from XDP_MMAP_OFFSETS on the fd).
type Geometry struct {
	QueueID   uint32 // queue the XSK is bound to (ef_vi_instance)
	EvqSize   uint32 // event queue capacity the SDK should present (<= 2^21)
	RxSize    uint32 // RX ring entries (0 or a power of 2 <= 2^20)
	TxSize    uint32 // TX ring entries
	FillSize  uint32 // fill ring entries
	CompSize  uint32 // completion ring entries
	FrameSize uint32 // UMEM chunk size (power of 2, 2048..65536)
	Headroom  uint32 // bytes before packet data in each chunk (< FrameSize)
}

func (g *Geometry) check(n string) error {
	if g.EvqSize > 2*MaxRingSize {
		return Errorf(syscall.EINVAL, "%s: field evq_size: %d exceeds %d", n, g.EvqSize, 2*MaxRingSize)
	}
	for _, r := range []struct {
		f string
		v uint32
	}{{"rx_size", g.RxSize}, {"tx_size", g.TxSize}, {"fill_size", g.FillSize}, {"comp_size", g.CompSize}} {
		if r.v != 0 && (!isPow2(r.v) || r.v > MaxRingSize) {
			return Errorf(syscall.EINVAL, "%s: field %s: %d, want 0 or a power of 2 <= %d", n, r.f, r.v, MaxRingSize)
		}
	}
	if (g.RxSize == 0) != (g.FillSize == 0) || (g.TxSize == 0) != (g.CompSize == 0) {
		return Errorf(syscall.EINVAL, "%s: rx/fill and tx/comp rings must both be present or both absent (rx %d fill %d tx %d comp %d)", n, g.RxSize, g.FillSize, g.TxSize, g.CompSize)
	}
	if g.RxSize == 0 && g.TxSize == 0 {
		return Errorf(syscall.EINVAL, "%s: no RX and no TX ring", n)
	}
	if !isPow2(g.FrameSize) || g.FrameSize < MinFrameSize || g.FrameSize > MaxFrameSize {
		return Errorf(syscall.EINVAL, "%s: field frame_size: %d, want a power of 2 in %d..%d", n, g.FrameSize, MinFrameSize, MaxFrameSize)
	}
	if g.Headroom >= g.FrameSize {
		return Errorf(syscall.EINVAL, "%s: field headroom: %d, must be below frame_size %d", n, g.Headroom, g.FrameSize)
	}
	return nil
}

// AllocVIReply carries the VI's id and ring geometry; the frame carries exactly
// one fd: the VI (an AF_XDP socket, bound and ready, on the software backend).
//
//	vi u32 (!= 0) | flags u32 | queue u32 | evq u32 | rx u32 | tx u32 | fill u32 | comp u32 | frame u32 | headroom u32
type AllocVIReply struct {
	VI    VIID
	Flags uint32 // ef_vi flags actually in force
	Geometry
}

func (*AllocVIReply) Type() MsgType { return TypeAllocVI.Reply() }

func (m *AllocVIReply) check() error {
	if m.VI == 0 {
		return idErr("ALLOC_VI_OK", "vi")
	}
	return m.Geometry.check("ALLOC_VI_OK")
}

func (m *AllocVIReply) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) {
		g := &m.Geometry
		for _, v := range []uint32{uint32(m.VI), m.Flags, g.QueueID, g.EvqSize, g.RxSize, g.TxSize, g.FillSize, g.CompSize, g.FrameSize, g.Headroom} {
			e.u32(v)
		}
	})
}

func (m *AllocVIReply) UnmarshalBinary(p []byte) error {
	d := newDec("ALLOC_VI_OK", p)
	v := AllocVIReply{VI: VIID(d.u32("vi")), Flags: d.u32("flags")}
	g := &v.Geometry
	g.QueueID, g.EvqSize = d.u32("queue"), d.u32("evq_size")
	g.RxSize, g.TxSize = d.u32("rx_size"), d.u32("tx_size")
	g.FillSize, g.CompSize = d.u32("fill_size"), d.u32("comp_size")
	g.FrameSize, g.Headroom = d.u32("frame_size"), d.u32("headroom")
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// ---- FILTER_ADD / FILTER_DEL ----

// FilterAddRequest adds a filter to a VI (ef_vi_filter_add). Spec uses efsink's
// grammar (e.g. "udp:10.0.0.2:8080"); the agent parses it and applies policy.
//
//	vi u32 (!= 0) | flags u32 (enum ef_filter_flags) | spec str (1..256)
type FilterAddRequest struct {
	VI    VIID
	Flags uint32
	Spec  string
}

func (*FilterAddRequest) Type() MsgType { return TypeFilterAdd }

func (m *FilterAddRequest) check() error {
	if m.VI == 0 {
		return idErr("FILTER_ADD", "vi")
	}
	return nil
}

func (m *FilterAddRequest) MarshalBinary() ([]byte, error) {
	if err := checkStr("FILTER_ADD", "spec", m.Spec, 1, MaxFilterSpec); err != nil {
		return nil, err
	}
	return marshalWith(m, m.check, func(e *enc) { e.u32(uint32(m.VI)); e.u32(m.Flags); e.str(m.Spec) })
}

func (m *FilterAddRequest) UnmarshalBinary(p []byte) error {
	d := newDec("FILTER_ADD", p)
	v := FilterAddRequest{VI: VIID(d.u32("vi")), Flags: d.u32("flags")}
	v.Spec = d.str("spec", 1, MaxFilterSpec)
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// FilterAddReply carries the filter's cookie (ef_filter_cookie).
//
//	cookie u64 (!= 0)
type FilterAddReply struct{ Cookie FilterCookie }

func (*FilterAddReply) Type() MsgType { return TypeFilterAdd.Reply() }

func (m *FilterAddReply) check() error {
	if m.Cookie == 0 {
		return idErr("FILTER_ADD_OK", "cookie")
	}
	return nil
}

func (m *FilterAddReply) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) { e.u64(uint64(m.Cookie)) })
}

func (m *FilterAddReply) UnmarshalBinary(p []byte) error {
	d := newDec("FILTER_ADD_OK", p)
	v := FilterAddReply{Cookie: FilterCookie(d.u64("cookie"))}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// FilterDelRequest removes a filter (ef_vi_filter_del). The reply is empty.
//
//	vi u32 (!= 0) | reserved u32 = 0 | cookie u64 (!= 0)
type FilterDelRequest struct {
	VI     VIID
	Cookie FilterCookie
}

func (*FilterDelRequest) Type() MsgType { return TypeFilterDel }

func (m *FilterDelRequest) check() error {
	if m.VI == 0 {
		return idErr("FILTER_DEL", "vi")
	}
	if m.Cookie == 0 {
		return idErr("FILTER_DEL", "cookie")
	}
	return nil
}

func (m *FilterDelRequest) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) { e.u32(uint32(m.VI)); e.u32(0); e.u64(uint64(m.Cookie)) })
}

func (m *FilterDelRequest) UnmarshalBinary(p []byte) error {
	d := newDec("FILTER_DEL", p)
	v := FilterDelRequest{VI: VIID(d.u32("vi"))}
	d.zero32("reserved")
	v.Cookie = FilterCookie(d.u64("cookie"))
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// ---- STATS ----

// StatsRequest reads a VI's counters (ef_vi_stats_query).
//
//	vi u32 (!= 0) | flags u32 (bit 0: StatsReset; others 0)
type StatsRequest struct {
	VI    VIID
	Flags uint32
}

func (*StatsRequest) Type() MsgType { return TypeStats }

func (m *StatsRequest) check() error {
	if m.VI == 0 {
		return idErr("STATS", "vi")
	}
	if m.Flags&^StatsReset != 0 {
		return Errorf(syscall.EINVAL, "STATS: field flags: %#x, only %#x (reset) is defined", m.Flags, StatsReset)
	}
	return nil
}

func (m *StatsRequest) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) { e.u32(uint32(m.VI)); e.u32(m.Flags) })
}

func (m *StatsRequest) UnmarshalBinary(p []byte) error {
	d := newDec("STATS", p)
	v := StatsRequest{VI: VIID(d.u32("vi")), Flags: d.u32("flags")}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// Stat is one named counter.
type Stat struct {
	Name  string
	Value uint64
}

// StatsReply lists counters. Names are unique, 1..64 bytes of [a-z0-9_.-].
//
//	n u16 (0..256) | n × (name str (1..64) | value u64)
type StatsReply struct{ Stats []Stat }

func (*StatsReply) Type() MsgType { return TypeStats.Reply() }

func checkStatName(s string) error {
	if len(s) == 0 || len(s) > MaxStatName {
		return fmt.Errorf("length %d outside 1..%d", len(s), MaxStatName)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("byte %d (%q) not in [a-z0-9_.-]", i, c)
		}
	}
	return nil
}

func (m *StatsReply) check() error {
	if len(m.Stats) > MaxStats {
		return Errorf(syscall.EINVAL, "STATS_OK: %d counters, limit %d", len(m.Stats), MaxStats)
	}
	seen := make(map[string]struct{}, len(m.Stats))
	for i, s := range m.Stats {
		if err := checkStatName(s.Name); err != nil {
			return Errorf(syscall.EINVAL, "STATS_OK: field stats[%d].name: %v", i, err)
		}
		if _, dup := seen[s.Name]; dup {
			return Errorf(syscall.EINVAL, "STATS_OK: field stats[%d].name: duplicate %q", i, s.Name)
		}
		seen[s.Name] = struct{}{}
	}
	return nil
}

func (m *StatsReply) MarshalBinary() ([]byte, error) {
	return marshalWith(m, m.check, func(e *enc) {
		e.u16(uint16(len(m.Stats)))
		for _, s := range m.Stats {
			e.str(s.Name)
			e.u64(s.Value)
		}
	})
}

func (m *StatsReply) UnmarshalBinary(p []byte) error {
	d := newDec("STATS_OK", p)
	var v StatsReply
	if n := d.count("stats", MaxStats, 2+1+8); n > 0 {
		v.Stats = make([]Stat, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			s := Stat{Name: d.str(fmt.Sprintf("stats[%d].name", i), 1, MaxStatName)}
			s.Value = d.u64(fmt.Sprintf("stats[%d].value", i))
			v.Stats = append(v.Stats, s)
		}
	}
	if err := d.end(); err != nil {
		return err
	}
	if err := v.check(); err != nil {
		return err
	}
	*m = v
	return nil
}

// Get returns the value of the named counter.
func (m *StatsReply) Get(name string) (uint64, bool) {
	i := slices.IndexFunc(m.Stats, func(s Stat) bool { return s.Name == name })
	if i < 0 {
		return 0, false
	}
	return m.Stats[i].Value, true
}

// ---- FREE_VI / FREE_MEM / FREE_PD / BYE ----

// idRequest is a request whose payload is one non-zero u32 id.
type idRequest struct {
	t  MsgType
	id uint32
}

func (m idRequest) marshal() ([]byte, error) {
	if m.id == 0 {
		return nil, fmt.Errorf("encode %v: %w", m.t, idErr(m.t.String(), "id"))
	}
	var e enc
	e.u32(m.id)
	return e.b, nil
}

func unmarshalID(t MsgType, p []byte) (uint32, error) {
	d := newDec(t.String(), p)
	id := d.u32("id")
	if err := d.end(); err != nil {
		return 0, err
	}
	if id == 0 {
		return 0, idErr(t.String(), "id")
	}
	return id, nil
}

// FreeVIRequest frees a VI and every filter on it (ef_vi_free). Empty reply.
//
//	vi u32 (!= 0)
type FreeVIRequest struct{ VI VIID }

func (*FreeVIRequest) Type() MsgType { return TypeFreeVI }
func (m *FreeVIRequest) MarshalBinary() ([]byte, error) {
	return idRequest{TypeFreeVI, uint32(m.VI)}.marshal()
}
func (m *FreeVIRequest) UnmarshalBinary(p []byte) error {
	id, err := unmarshalID(TypeFreeVI, p)
	if err == nil {
		m.VI = VIID(id)
	}
	return err
}

// FreeMemRequest frees a memory region (ef_memreg_free). Empty reply.
//
//	memreg u32 (!= 0)
type FreeMemRequest struct{ MemReg MemRegID }

func (*FreeMemRequest) Type() MsgType { return TypeFreeMem }
func (m *FreeMemRequest) MarshalBinary() ([]byte, error) {
	return idRequest{TypeFreeMem, uint32(m.MemReg)}.marshal()
}
func (m *FreeMemRequest) UnmarshalBinary(p []byte) error {
	id, err := unmarshalID(TypeFreeMem, p)
	if err == nil {
		m.MemReg = MemRegID(id)
	}
	return err
}

// FreePDRequest frees a protection domain (ef_pd_free). Empty reply.
//
//	pd u32 (!= 0)
type FreePDRequest struct{ PD PDID }

func (*FreePDRequest) Type() MsgType { return TypeFreePD }
func (m *FreePDRequest) MarshalBinary() ([]byte, error) {
	return idRequest{TypeFreePD, uint32(m.PD)}.marshal()
}
func (m *FreePDRequest) UnmarshalBinary(p []byte) error {
	id, err := unmarshalID(TypeFreePD, p)
	if err == nil {
		m.PD = PDID(id)
	}
	return err
}

// ByeRequest ends the session: the server replies, frees everything the
// client held and closes the connection. Empty payload, empty reply.
type ByeRequest struct{}

func (*ByeRequest) Type() MsgType                  { return TypeBye }
func (*ByeRequest) MarshalBinary() ([]byte, error) { return nil, nil }
func (*ByeRequest) UnmarshalBinary(p []byte) error { return unmarshalEmpty(TypeBye, p) }

// EmptyReply is the OK reply with no payload (FILTER_DEL, FREE_*, BYE).
type EmptyReply struct{ Req MsgType }

func (m *EmptyReply) Type() MsgType                  { return m.Req.Reply() }
func (*EmptyReply) MarshalBinary() ([]byte, error)   { return nil, nil }
func (m *EmptyReply) UnmarshalBinary(p []byte) error { return unmarshalEmpty(m.Type(), p) }

func unmarshalEmpty(t MsgType, p []byte) error {
	if len(p) != 0 {
		return Errorf(syscall.EINVAL, "decode %v: %d trailing bytes, payload must be empty", t, len(p))
	}
	return nil
}

// NewRequest returns an empty request message for type t, or an *Error with
// EOPNOTSUPP for a type this version does not know.
func NewRequest(t MsgType) (Message, error) {
	switch t {
	case TypeHello:
		return &HelloRequest{}, nil
	case TypeAllocPD:
		return &AllocPDRequest{}, nil
	case TypeRegMem:
		return &RegMemRequest{}, nil
	case TypeAllocVI:
		return &AllocVIRequest{}, nil
	case TypeFilterAdd:
		return &FilterAddRequest{}, nil
	case TypeFilterDel:
		return &FilterDelRequest{}, nil
	case TypeStats:
		return &StatsRequest{}, nil
	case TypeFreeVI:
		return &FreeVIRequest{}, nil
	case TypeFreeMem:
		return &FreeMemRequest{}, nil
	case TypeFreePD:
		return &FreePDRequest{}, nil
	case TypeBye:
		return &ByeRequest{}, nil
	}
	return nil, Errorf(syscall.EOPNOTSUPP, "unknown request type 0x%02x (this agent speaks broker protocol v%d)", uint8(t), Version)
}

// NewReply returns an empty reply message for type t (an OK reply type or TypeError).
func NewReply(t MsgType) (Message, error) {
	switch t {
	case TypeError:
		return &ErrorReply{}, nil
	case TypeHello.Reply():
		return &HelloReply{}, nil
	case TypeAllocPD.Reply():
		return &AllocPDReply{}, nil
	case TypeRegMem.Reply():
		return &RegMemReply{}, nil
	case TypeAllocVI.Reply():
		return &AllocVIReply{}, nil
	case TypeFilterAdd.Reply():
		return &FilterAddReply{}, nil
	case TypeStats.Reply():
		return &StatsReply{}, nil
	case TypeFilterDel.Reply(), TypeFreeVI.Reply(), TypeFreeMem.Reply(), TypeFreePD.Reply(), TypeBye.Reply():
		return &EmptyReply{Req: t &^ ReplyBit}, nil
	}
	return nil, Errorf(syscall.EPROTO, "unknown reply type 0x%02x", uint8(t))
}

// DecodeRequest decodes a request payload of type t.
func DecodeRequest(t MsgType, p []byte) (Message, error) {
	m, err := NewRequest(t)
	if err != nil {
		return nil, err
	}
	if err := m.UnmarshalBinary(p); err != nil {
		return nil, err
	}
	return m, nil
}

// DecodeReply decodes a reply payload of type t.
func DecodeReply(t MsgType, p []byte) (Message, error) {
	m, err := NewReply(t)
	if err != nil {
		return nil, err
	}
	if err := m.UnmarshalBinary(p); err != nil {
		return nil, err
	}
	return m, nil
}
