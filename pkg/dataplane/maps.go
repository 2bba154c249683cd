package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Filter key layout (48 bytes, 8-byte aligned fields for stack copies). Port
// numbers, EtherType and addresses are in network byte order, exactly as in
// the packet; VLAN is the host-order VID or vlanNone.
const (
	keyOffKind      = 0  // u8 kind*
	keyOffProto     = 1  // u8 IP protocol
	keyOffVLAN      = 2  // u16 VID (host order) or vlanNone
	keyOffEtherType = 4  // u16 be
	keyOffLPort     = 6  // u16 be, destination port
	keyOffRPort     = 8  // u16 be, source port
	keyOffMAC       = 10 // [6]byte destination MAC
	keyOffLAddr     = 16 // [16]byte destination IP (IPv4 in the first 4 bytes)
	keyOffRAddr     = 32 // [16]byte source IP
	filterKeySize   = 48

	vlanNone = 0xffff
)

// Key kinds. The port program looks them up in this order (all/mismatch pick
// the multicast kind by adding 1 for multicast frames). Block kinds are
// bookkeeping entries the program never looks up.
const (
	kindFull           = 1
	kindLocal          = 2
	kindMACEtherType   = 3
	kindMACProto       = 4
	kindMAC            = 5
	kindEtherType      = 6
	kindIPProto        = 7
	kindUnicastAll     = 8
	kindMulticastAll   = 9
	kindUnicastMis     = 10
	kindMulticastMis   = 11
	kindBlockUnicast   = 12
	kindBlockMulticast = 13
	numKinds           = 14
)

// Compact IPv4 keys. IPv4 local and full filters without a VLAN (the common
// case) live in their own maps with short keys rather than in the generic
// 48-byte one: local4 keys are the first 8 bytes of the layout, full4 keys
// all 16. Addresses and ports are in network byte order, pads zero.
const (
	key4OffLAddr  = 0  // u32 destination IP
	key4OffLPort  = 4  // u16 destination port
	key4OffProto  = 6  // u8 IP protocol, then a zero pad byte
	key4OffRAddr  = 8  // u32 source IP (full4 only)
	key4OffRPort  = 12 // u16 source port, then a zero pad u16 (full4 only)
	local4KeySize = 8
	full4KeySize  = 16

	// Presence bits of the compact maps in configVal.Present (the generic
	// kinds use bit kind).
	bitLocal4 = numKinds
	bitFull4  = numKinds + 1
	numBits   = numKinds + 2
)

// Filter value layout.
const (
	valOffVI    = 0
	valOffMode  = 4
	valOffGroup = 8
	valOffSlot  = 12

	modeSteal     = 0
	modeReplicate = 1
	modeNone      = 2 // bookkeeping entry (block-kernel)

	noVI = 0xffffffff
)

const (
	protoUDP = 17
	protoTCP = 6
)

type filterKey [filterKeySize]byte

type filterVal struct {
	VI    uint32
	Mode  uint32
	Group uint32
	Slot  uint32
}

// configVal is the single entry of the config map.
type configVal struct {
	Present uint32 // bit k: some filter of kind k is installed
	Block   uint32 // bit 0: block unicast to the kernel; bit 1: multicast
}

// txCfg is the value of the TX map, keyed by the ifindex of v<N>.
type txCfg struct {
	MAC [6]byte
	_   [2]byte
	VI  uint32
}

// srcKey is the key of the allowed-sources map.
type srcKey struct {
	VI     uint32
	Family uint32 // 4 or 6
	Addr   [16]byte
}

// sniffCfg is the single entry of the sniff map.
type sniffCfg struct {
	Ifindex uint32 // v<N> of the sniffing VI; 0 = no sniff
	Promisc uint32
	VI      uint32
}

const (
	sniffOffIfindex = 0
	sniffOffPromisc = 4
)

// Counters are a VI's packet counters, summed over CPUs.
type Counters struct {
	RxPackets        uint64 // frames that reached the VI's veth (any delivery mode)
	RxBytes          uint64
	TxPackets        uint64 // frames the VI sent that passed the source check
	TxBytes          uint64
	TxSpoofDrops     uint64 // frames the VI sent with a source MAC/IP it does not own
	RxRedirectErrors uint64 // matched frames the port could not hand to the VI's veth
}

// Limits size the maps. Zero fields take defaults.
type Limits struct {
	MaxVIs     uint32 // VI ids are 0..MaxVIs-1 (default 256)
	MaxFilters uint32 // default 16384
	MaxGroups  uint32 // replicate groups (default 1024)
	MaxSources uint32 // allowed source addresses over all VIs (default 4096)
}

func (l Limits) withDefaults() Limits {
	if l.MaxVIs == 0 {
		l.MaxVIs = 256
	}
	if l.MaxFilters == 0 {
		l.MaxFilters = 16384
	}
	if l.MaxGroups == 0 {
		l.MaxGroups = 1024
	}
	if l.MaxSources == 0 {
		l.MaxSources = 4096
	}
	return l
}

// maps are the port's BPF maps.
type maps struct {
	filters *ebpf.Map // HASH filterKey → filterVal
	local4  *ebpf.Map // HASH local4 key → filterVal (IPv4 local, no VLAN)
	full4   *ebpf.Map // HASH full4 key → filterVal (IPv4 full, no VLAN)
	hits    *ebpf.Map // PERCPU_ARRAY slot → u64
	config  *ebpf.Map // ARRAY[1] configVal
	viDev   *ebpf.Map // DEVMAP (VI ids are dense) vi → ifindex of v<N>
	groups  *ebpf.Map // HASH_OF_MAPS group → DEVMAP_HASH (vi → ifindex of v<N>)
	xsks    *ebpf.Map // XSKMAP vi → XSK
	ifToVI  *ebpf.Map // HASH ifindex of v<N>p → vi
	txCfg   *ebpf.Map // HASH ifindex of v<N> → txCfg
	allowed *ebpf.Map // HASH srcKey → u32
	stats   *ebpf.Map // PERCPU_ARRAY vi → Counters
	portDev *ebpf.Map // DEVMAP[1] port ifindex
	sniff   *ebpf.Map // ARRAY[1] sniffCfg
	capture *ebpf.Map // ARRAY vi → u32 snap length (0 = not capturing); see capture.go
	events  *ebpf.Map // PERF_EVENT_ARRAY cpu → perf event (capture output)

	innerSpec *ebpf.MapSpec
}

type mapDef struct {
	name string
	ptr  **ebpf.Map
	spec *ebpf.MapSpec
}

func (m *maps) defs(l Limits) []mapDef {
	inner := &ebpf.MapSpec{Name: "efvi_group", Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, MaxEntries: l.MaxVIs}
	m.innerSpec = inner
	return []mapDef{
		{"filters", &m.filters, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: filterKeySize, ValueSize: 16, MaxEntries: l.MaxFilters}},
		{"local4", &m.local4, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: local4KeySize, ValueSize: 16, MaxEntries: l.MaxFilters}},
		{"full4", &m.full4, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: full4KeySize, ValueSize: 16, MaxEntries: l.MaxFilters}},
		{"hits", &m.hits, &ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: l.MaxFilters}},
		{"config", &m.config, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1}},
		{"vi_devs", &m.viDev, &ebpf.MapSpec{Type: ebpf.DevMap, KeySize: 4, ValueSize: 4, MaxEntries: l.MaxVIs}},
		{"groups", &m.groups, &ebpf.MapSpec{Type: ebpf.HashOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: l.MaxGroups, InnerMap: inner}},
		{"xsks", &m.xsks, &ebpf.MapSpec{Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: l.MaxVIs}},
		{"if_to_vi", &m.ifToVI, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: l.MaxVIs}},
		{"tx_cfg", &m.txCfg, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 12, MaxEntries: l.MaxVIs}},
		{"allowed", &m.allowed, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 24, ValueSize: 4, MaxEntries: l.MaxSources}},
		{"stats", &m.stats, &ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 48, MaxEntries: l.MaxVIs}},
		{"port_dev", &m.portDev, &ebpf.MapSpec{Type: ebpf.DevMap, KeySize: 4, ValueSize: 4, MaxEntries: 1}},
		{"sniff", &m.sniff, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 12, MaxEntries: 1}},
		{"capture", &m.capture, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: l.MaxVIs}},
		{"cap_events", &m.events, &ebpf.MapSpec{Type: ebpf.PerfEventArray, KeySize: 4, ValueSize: 4}}, // MaxEntries 0: one per possible CPU
	}
}

// openMaps loads the maps pinned in dir, creating and pinning missing ones.
// dir == "" creates unpinned maps (unit tests). adopted reports whether the
// filter map already existed (an agent restart).
func openMaps(dir string, l Limits) (m *maps, adopted bool, err error) {
	m = &maps{}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	for _, d := range m.defs(l) {
		d.spec.Name = "efvi_" + d.name
		if len(d.spec.Name) > 15 {
			d.spec.Name = d.spec.Name[:15]
		}
		if dir != "" {
			path := filepath.Join(dir, d.name)
			pm, lerr := ebpf.LoadPinnedMap(path, nil)
			switch {
			case lerr == nil:
				if cerr := d.spec.Compatible(pm); cerr != nil {
					pm.Close()
					return nil, false, fmt.Errorf("pinned map %s does not match this agent's layout (%w); remove the pin directory %s (Port.Destroy) to start afresh", path, cerr, dir)
				}
				*d.ptr = pm
				if d.name == "filters" {
					adopted = true
				}
				continue
			case !errors.Is(lerr, os.ErrNotExist):
				return nil, false, fmt.Errorf("load pinned map %s: %w", path, lerr)
			}
		}
		nm, nerr := ebpf.NewMap(d.spec)
		if nerr != nil {
			return nil, false, fmt.Errorf("create map %s: %w", d.name, nerr)
		}
		*d.ptr = nm
		if dir != "" {
			if perr := nm.Pin(filepath.Join(dir, d.name)); perr != nil {
				return nil, false, fmt.Errorf("pin map %s: %w", d.name, perr)
			}
		}
	}
	if dir != "" {
		// Earlier agents kept the VI devmap as a DEVMAP_HASH pinned as
		// vi_dev; this one uses the array vi_devs (adoptVIs refills it).
		_ = os.Remove(filepath.Join(dir, "vi_dev"))
	}
	return m, adopted, nil
}

func (m *maps) all() []*ebpf.Map {
	return []*ebpf.Map{m.filters, m.local4, m.full4, m.hits, m.config, m.viDev, m.groups, m.xsks, m.ifToVI, m.txCfg, m.allowed, m.stats, m.portDev, m.sniff, m.capture, m.events}
}

func (m *maps) close() {
	for _, x := range m.all() {
		if x != nil {
			x.Close()
		}
	}
}

// unpin removes the pins of all maps.
func (m *maps) unpin() error {
	var errs []error
	for _, x := range m.all() {
		if x != nil && x.IsPinned() {
			errs = append(errs, x.Unpin())
		}
	}
	return errors.Join(errs...)
}

// readCounters sums a VI's per-CPU counters.
func (m *maps) readCounters(vi uint32) (Counters, error) {
	var per []Counters
	if err := m.stats.Lookup(vi, &per); err != nil {
		return Counters{}, fmt.Errorf("read counters of VI %d: %w", vi, err)
	}
	var c Counters
	for _, p := range per {
		c.RxPackets += p.RxPackets
		c.RxBytes += p.RxBytes
		c.TxPackets += p.TxPackets
		c.TxBytes += p.TxBytes
		c.TxSpoofDrops += p.TxSpoofDrops
		c.RxRedirectErrors += p.RxRedirectErrors
	}
	return c, nil
}

// resetCounters zeroes a VI's counters (a new VI reusing an id).
func (m *maps) resetCounters(vi uint32) error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := m.stats.Put(vi, make([]Counters, n)); err != nil {
		return fmt.Errorf("reset counters of VI %d: %w", vi, err)
	}
	return nil
}

func (m *maps) readHits(slot uint32) (uint64, error) {
	var per []uint64
	if err := m.hits.Lookup(slot, &per); err != nil {
		return 0, err
	}
	var s uint64
	for _, v := range per {
		s += v
	}
	return s, nil
}

func (m *maps) resetHits(slot uint32) error {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	return m.hits.Put(slot, make([]uint64, n))
}

func putBE16(k *filterKey, off int, v uint16) { binary.BigEndian.PutUint16(k[off:], v) }

// compactKey says whether filter key k lives in a compact IPv4 map (an IPv4
// local or full key without VLAN) and returns its presence bit, map and
// compact key.
func (m *maps) compactKey(k filterKey) (bit int, cm *ebpf.Map, ck []byte, ok bool) {
	if binary.NativeEndian.Uint16(k[keyOffVLAN:]) != vlanNone || binary.BigEndian.Uint16(k[keyOffEtherType:]) != 0x0800 {
		return 0, nil, nil, false
	}
	var b [full4KeySize]byte
	copy(b[key4OffLAddr:], k[keyOffLAddr:keyOffLAddr+4])
	copy(b[key4OffLPort:], k[keyOffLPort:keyOffLPort+2])
	b[key4OffProto] = k[keyOffProto]
	switch k[keyOffKind] {
	case kindLocal:
		return bitLocal4, m.local4, b[:local4KeySize], true
	case kindFull:
		copy(b[key4OffRAddr:], k[keyOffRAddr:keyOffRAddr+4])
		copy(b[key4OffRPort:], k[keyOffRPort:keyOffRPort+2])
		return bitFull4, m.full4, b[:], true
	}
	return 0, nil, nil, false
}

// fromCompact is the filter key of compact key ck of kind kindLocal or
// kindFull.
func fromCompact(kind uint8, ck []byte) filterKey {
	var k filterKey
	k[keyOffKind] = kind
	binary.NativeEndian.PutUint16(k[keyOffVLAN:], vlanNone)
	putBE16(&k, keyOffEtherType, 0x0800)
	k[keyOffProto] = ck[key4OffProto]
	copy(k[keyOffLAddr:], ck[key4OffLAddr:key4OffLAddr+4])
	copy(k[keyOffLPort:], ck[key4OffLPort:key4OffLPort+2])
	if kind == kindFull {
		copy(k[keyOffRAddr:], ck[key4OffRAddr:key4OffRAddr+4])
		copy(k[keyOffRPort:], ck[key4OffRPort:key4OffRPort+2])
	}
	return k
}

// presenceBit is the configVal.Present bit a filter key sets.
func (m *maps) presenceBit(k filterKey) int {
	if bit, _, _, ok := m.compactKey(k); ok {
		return bit
	}
	return int(k[keyOffKind])
}

// putFilter adds k → v to the map it belongs in (UpdateNoExist).
func (m *maps) putFilter(k filterKey, v filterVal) error {
	if _, cm, ck, ok := m.compactKey(k); ok {
		return cm.Update(ck, v, ebpf.UpdateNoExist)
	}
	return m.filters.Update(k, v, ebpf.UpdateNoExist)
}

// deleteFilter removes k from the map it belongs in.
func (m *maps) deleteFilter(k filterKey) error {
	if _, cm, ck, ok := m.compactKey(k); ok {
		return cm.Delete(ck)
	}
	return m.filters.Delete(k)
}
