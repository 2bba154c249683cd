package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// Handle names an installed filter: the VI it delivers to and its spec. It
// stays valid across an agent restart (the keys are derived from the spec),
// so an agent that re-adopts a port can remove filters it installed before.
type Handle struct {
	VI   uint32
	Spec filter.Spec
}

// class is what a spec turns into.
type class struct {
	keys      []filterKey
	multicast bool // replicate: identical filters from several VIs share delivery
	mode      uint32
	sniff     bool
}

// classify translates a spec into filter map keys. It checks only what the
// data plane needs; ef_vi's full combination rules live in pkg/filter.
func classify(vi uint32, s filter.Spec) (class, error) {
	const ipMatch = filter.MatchLocalHost | filter.MatchLocalPort | filter.MatchRemoteHost |
		filter.MatchRemotePort | filter.MatchIPProto | filter.MatchEtherType | filter.MatchVLAN
	m := s.Match
	bad := func(why string) (class, error) {
		return class{}, fmt.Errorf("filter %+v: %s: %w", s, why, unix.EINVAL)
	}
	vlan := uint16(vlanNone)
	if m&filter.MatchVLAN != 0 {
		if s.VLAN > 4095 {
			return bad("VLAN id above 4095")
		}
		vlan = s.VLAN
	}
	base := func(kind uint8) filterKey {
		var k filterKey
		k[keyOffKind] = kind
		binary.NativeEndian.PutUint16(k[keyOffVLAN:], vlan)
		return k
	}
	switch {
	case m&filter.MatchTxSniff != 0:
		return class{}, fmt.Errorf("filter %+v: tx-sniff is not implemented by the software data plane: %w", s, unix.EOPNOTSUPP)
	case m&filter.MatchSniff != 0:
		if m != filter.MatchSniff {
			return bad("sniff needs an otherwise empty spec")
		}
		return class{sniff: true}, nil
	case m&filter.MatchBlockKernel != 0:
		if m != filter.MatchBlockKernel {
			return bad("block-kernel needs an otherwise empty spec")
		}
		mk := func(kind uint8) filterKey {
			var k filterKey
			k[keyOffKind] = kind
			binary.NativeEndian.PutUint16(k[keyOffVLAN:], vlanNone)
			binary.BigEndian.PutUint32(k[keyOffLAddr:], vi) // one entry per blocking VI
			return k
		}
		c := class{mode: modeNone}
		switch s.Block {
		case filter.BlockAll:
			c.keys = []filterKey{mk(kindBlockUnicast), mk(kindBlockMulticast)}
		case filter.BlockUnicast:
			c.keys = []filterKey{mk(kindBlockUnicast)}
		case filter.BlockMulticast:
			c.keys = []filterKey{mk(kindBlockMulticast)}
		default:
			return bad(fmt.Sprintf("unknown block kind %d", s.Block))
		}
		return c, nil
	case m == filter.MatchUnicastAll:
		return class{keys: []filterKey{base(kindUnicastAll)}}, nil
	case m == filter.MatchMulticastAll:
		return class{keys: []filterKey{base(kindMulticastAll)}, multicast: true}, nil
	case m&^filter.MatchVLAN == filter.MatchUnicastMismatch:
		return class{keys: []filterKey{base(kindUnicastMis)}}, nil
	case m&^filter.MatchVLAN == filter.MatchMulticastMismatch:
		return class{keys: []filterKey{base(kindMulticastMis)}, multicast: true}, nil
	case m&filter.MatchLocalHost != 0:
		if m&^ipMatch != 0 {
			return bad("IP filters combine only with VLAN")
		}
		if m&filter.MatchLocalPort == 0 || m&filter.MatchIPProto == 0 {
			return bad("IP filter needs protocol and local port")
		}
		if s.IPProto != filter.ProtoUDP && s.IPProto != filter.ProtoTCP {
			return bad(fmt.Sprintf("IP protocol %d: only UDP (17) and TCP (6)", s.IPProto))
		}
		lh := s.LocalHost.Unmap()
		if !lh.IsValid() {
			return bad("local host is not set")
		}
		kind := uint8(kindLocal)
		full := m&filter.MatchRemoteHost != 0
		if full {
			kind = kindFull
			if m&filter.MatchRemotePort == 0 {
				return bad("full IP filter needs a remote port")
			}
			if rh := s.RemoteHost.Unmap(); !rh.IsValid() || rh.Is4() != lh.Is4() {
				return bad("remote host missing or of another address family than the local host")
			}
		} else if m&filter.MatchRemotePort != 0 {
			return bad("remote port without remote host")
		}
		k := base(kind)
		k[keyOffProto] = s.IPProto
		if lh.Is4() {
			putBE16(&k, keyOffEtherType, filter.EtherTypeIPv4)
		} else {
			putBE16(&k, keyOffEtherType, filter.EtherTypeIPv6)
		}
		if m&filter.MatchEtherType != 0 && binary.BigEndian.Uint16(k[keyOffEtherType:]) != s.EtherType {
			return bad(fmt.Sprintf("EtherType %#04x disagrees with the local host's family", s.EtherType))
		}
		putBE16(&k, keyOffLPort, s.LocalPort)
		putAddr(&k, keyOffLAddr, lh)
		if full {
			putBE16(&k, keyOffRPort, s.RemotePort)
			putAddr(&k, keyOffRAddr, s.RemoteHost.Unmap())
		}
		return class{keys: []filterKey{k}, multicast: lh.IsMulticast()}, nil
	case m&filter.MatchLocalMAC != 0:
		rest := m &^ (filter.MatchLocalMAC | filter.MatchVLAN)
		mcast := s.LocalMAC[0]&1 != 0
		var keys []filterKey
		switch rest {
		case 0:
			k := base(kindMAC)
			copy(k[keyOffMAC:], s.LocalMAC[:])
			keys = append(keys, k)
		case filter.MatchEtherType:
			k := base(kindMACEtherType)
			copy(k[keyOffMAC:], s.LocalMAC[:])
			putBE16(&k, keyOffEtherType, s.EtherType)
			keys = append(keys, k)
		case filter.MatchIPProto, filter.MatchIPProto | filter.MatchEtherType:
			k := base(kindMACProto)
			copy(k[keyOffMAC:], s.LocalMAC[:])
			k[keyOffProto] = s.IPProto
			keys = append(keys, k)
		default:
			return bad("MAC filters combine with one of EtherType or IP protocol only")
		}
		return class{keys: keys, multicast: mcast}, nil
	case m&^filter.MatchVLAN == filter.MatchEtherType:
		k := base(kindEtherType)
		putBE16(&k, keyOffEtherType, s.EtherType)
		return class{keys: []filterKey{k}}, nil
	case m&^(filter.MatchVLAN|filter.MatchEtherType) == filter.MatchIPProto:
		// The protocol field is valid for IPv4 and IPv6 alike (fragments too).
		k := base(kindIPProto)
		k[keyOffProto] = s.IPProto
		return class{keys: []filterKey{k}}, nil
	}
	return bad("no supported match criteria")
}

func putAddr(k *filterKey, off int, a netip.Addr) {
	if a.Is4() {
		b := a.As4()
		copy(k[off:], b[:])
		return
	}
	b := a.As16()
	copy(k[off:], b[:])
}

// table mirrors the filter maps and keeps the bookkeeping around them:
// replicate groups, counter slots and the config bits. It can be rebuilt
// from the pinned maps after an agent restart.
type table struct {
	m         *maps
	limits    Limits
	viIfindex func(vi uint32) (int, error) // ifindex of the VI's v<N>

	entries   map[filterKey]filterVal
	kindCount [numBits]int // live keys per presence bit
	slotRefs  map[uint32]int
	members   map[uint32]map[uint32]struct{} // group → VIs
	inner     map[uint32]*ebpf.Map           // group → DEVMAP_HASH
	sniff     sniffCfg
}

func newTable(m *maps, l Limits, viIfindex func(uint32) (int, error)) *table {
	return &table{
		m: m, limits: l, viIfindex: viIfindex,
		entries:  map[filterKey]filterVal{},
		slotRefs: map[uint32]int{},
		members:  map[uint32]map[uint32]struct{}{},
		inner:    map[uint32]*ebpf.Map{},
	}
}

// rebuild reads the state back from the maps (an adopted port). Keys an
// earlier agent kept in the generic map but this one keeps in a compact map
// are moved there, compact entry first, so the frame path never misses them.
func (t *table) rebuild() error {
	type found struct {
		k       filterKey
		v       filterVal
		generic bool
	}
	var all []found
	read := func(m *ebpf.Map, conv func([]byte) filterKey, keySize int, generic bool) error {
		ck := make([]byte, keySize)
		var v filterVal
		it := m.Iterate()
		for it.Next(ck, &v) {
			all = append(all, found{conv(ck), v, generic})
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("read filter map: %w", err)
		}
		return nil
	}
	if err := read(t.m.filters, func(b []byte) filterKey { return filterKey(b) }, filterKeySize, true); err != nil {
		return err
	}
	if err := read(t.m.local4, func(b []byte) filterKey { return fromCompact(kindLocal, b) }, local4KeySize, false); err != nil {
		return err
	}
	if err := read(t.m.full4, func(b []byte) filterKey { return fromCompact(kindFull, b) }, full4KeySize, false); err != nil {
		return err
	}
	for _, f := range all {
		if _, cm, ck, ok := t.m.compactKey(f.k); ok && f.generic {
			if err := cm.Update(ck, f.v, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("move filter entry to its compact map: %w", err)
			}
			if err := t.m.filters.Delete(f.k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("move filter entry to its compact map: %w", err)
			}
		}
		if err := t.adoptEntry(f.k, f.v); err != nil {
			return err
		}
	}
	if err := t.m.sniff.Lookup(uint32(0), &t.sniff); err != nil {
		return fmt.Errorf("read sniff config: %w", err)
	}
	return t.writeConfig()
}

// adoptEntry records an entry found in the maps, with its replicate group.
func (t *table) adoptEntry(k filterKey, v filterVal) error {
	t.entries[k] = v
	if int(k[keyOffKind]) < numKinds {
		t.kindCount[t.m.presenceBit(k)]++
	}
	t.slotRefs[v.Slot]++
	if v.Mode != modeReplicate {
		return nil
	}
	if _, ok := t.inner[v.Group]; ok {
		return nil
	}
	var id uint32
	if err := t.m.groups.Lookup(v.Group, &id); err != nil {
		return fmt.Errorf("adopt replicate group %d: %w", v.Group, err)
	}
	im, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		return fmt.Errorf("adopt replicate group %d (map id %d): %w", v.Group, id, err)
	}
	t.inner[v.Group] = im
	mem := map[uint32]struct{}{}
	var vi, ifx uint32
	iit := im.Iterate()
	for iit.Next(&vi, &ifx) {
		mem[vi] = struct{}{}
	}
	if err := iit.Err(); err != nil {
		return fmt.Errorf("read replicate group %d: %w", v.Group, err)
	}
	t.members[v.Group] = mem
	return nil
}

func (t *table) close() {
	for _, im := range t.inner {
		im.Close()
	}
	t.inner = map[uint32]*ebpf.Map{}
}

func (t *table) writeConfig() error {
	var c configVal
	for bit, n := range t.kindCount {
		if n > 0 {
			c.Present |= 1 << bit
		}
	}
	if t.kindCount[kindBlockUnicast] > 0 {
		c.Block |= 1
	}
	if t.kindCount[kindBlockMulticast] > 0 {
		c.Block |= 2
	}
	if err := t.m.config.Put(uint32(0), c); err != nil {
		return fmt.Errorf("write data plane config: %w", err)
	}
	return nil
}

func (t *table) allocSlot() (uint32, error) {
	for s := uint32(0); s < t.limits.MaxFilters; s++ {
		if t.slotRefs[s] == 0 {
			if err := t.m.resetHits(s); err != nil {
				return 0, fmt.Errorf("reset hit counter %d: %w", s, err)
			}
			return s, nil
		}
	}
	return 0, fmt.Errorf("all %d filter slots in use: %w", t.limits.MaxFilters, unix.ENOSPC)
}

func (t *table) allocGroup() (uint32, error) {
	used := map[uint32]bool{}
	for _, v := range t.entries {
		if v.Mode == modeReplicate {
			used[v.Group] = true
		}
	}
	for g := uint32(1); g <= t.limits.MaxGroups; g++ {
		if !used[g] {
			return g, nil
		}
	}
	return 0, fmt.Errorf("all %d replicate groups in use: %w", t.limits.MaxGroups, unix.ENOSPC)
}

// install adds the filter for vi.
func (t *table) install(vi uint32, s filter.Spec) (err error) {
	c, err := classify(vi, s)
	if err != nil {
		return err
	}
	if c.sniff {
		return t.installSniff(vi, s.Promisc)
	}
	// Check everything before touching the maps.
	for _, k := range c.keys {
		v, ok := t.entries[k]
		switch {
		case !ok:
		case c.multicast && v.Mode == modeReplicate:
			if _, member := t.members[v.Group][vi]; member {
				return fmt.Errorf("filter %+v already installed for VI %d: %w", s, vi, unix.EEXIST)
			}
		case v.VI == vi:
			return fmt.Errorf("filter %+v already installed for VI %d: %w", s, vi, unix.EEXIST)
		default:
			return fmt.Errorf("filter %+v is owned by VI %d: %w", s, v.VI, unix.EEXIST)
		}
	}
	var done []filterKey
	defer func() {
		if err != nil {
			for _, k := range done {
				_ = t.removeKey(vi, k)
			}
		}
	}()
	for _, k := range c.keys {
		if err := t.addKey(vi, k, c); err != nil {
			return fmt.Errorf("install filter %+v for VI %d: %w", s, vi, err)
		}
		done = append(done, k)
	}
	return t.writeConfig()
}

func (t *table) addKey(vi uint32, k filterKey, c class) error {
	if !c.multicast {
		slot, err := t.allocSlot()
		if err != nil {
			return err
		}
		v := filterVal{VI: vi, Mode: c.mode, Slot: slot}
		if err := t.m.putFilter(k, v); err != nil {
			return fmt.Errorf("add filter entry: %w", err)
		}
		t.entries[k] = v
		t.slotRefs[slot]++
		t.kindCount[t.m.presenceBit(k)]++
		return nil
	}
	ifx, err := t.viIfindex(vi)
	if err != nil {
		return err
	}
	v, ok := t.entries[k]
	if ok {
		if err := t.inner[v.Group].Put(vi, uint32(ifx)); err != nil {
			return fmt.Errorf("join replicate group %d: %w", v.Group, err)
		}
		t.members[v.Group][vi] = struct{}{}
		return nil
	}
	g, err := t.allocGroup()
	if err != nil {
		return err
	}
	slot, err := t.allocSlot()
	if err != nil {
		return err
	}
	im, err := ebpf.NewMap(t.m.innerSpec)
	if err != nil {
		return fmt.Errorf("create replicate group map: %w", err)
	}
	if err := im.Put(vi, uint32(ifx)); err != nil {
		im.Close()
		return fmt.Errorf("join replicate group %d: %w", g, err)
	}
	if err := t.m.groups.Update(g, im, ebpf.UpdateAny); err != nil {
		im.Close()
		return fmt.Errorf("add replicate group %d: %w", g, err)
	}
	v = filterVal{VI: noVI, Mode: modeReplicate, Group: g, Slot: slot}
	if err := t.m.putFilter(k, v); err != nil {
		_ = t.m.groups.Delete(g)
		im.Close()
		return fmt.Errorf("add filter entry: %w", err)
	}
	t.inner[g] = im
	t.members[g] = map[uint32]struct{}{vi: {}}
	t.entries[k] = v
	t.slotRefs[slot]++
	t.kindCount[t.m.presenceBit(k)]++
	return nil
}

// removeKey drops vi's claim on k.
func (t *table) removeKey(vi uint32, k filterKey) error {
	v, ok := t.entries[k]
	if !ok {
		return unix.ENOENT
	}
	if v.Mode == modeReplicate {
		mem := t.members[v.Group]
		if _, ok := mem[vi]; !ok {
			return unix.ENOENT
		}
		if err := t.inner[v.Group].Delete(vi); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("leave replicate group %d: %w", v.Group, err)
		}
		delete(mem, vi)
		if len(mem) > 0 {
			return nil
		}
	} else if v.VI != vi {
		return unix.ENOENT
	}
	if err := t.m.deleteFilter(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete filter entry: %w", err)
	}
	delete(t.entries, k)
	t.kindCount[t.m.presenceBit(k)]--
	t.slotRefs[v.Slot]--
	if t.slotRefs[v.Slot] <= 0 {
		delete(t.slotRefs, v.Slot)
	}
	if v.Mode == modeReplicate {
		if err := t.m.groups.Delete(v.Group); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete replicate group %d: %w", v.Group, err)
		}
		if im := t.inner[v.Group]; im != nil {
			im.Close()
		}
		delete(t.inner, v.Group)
		delete(t.members, v.Group)
	}
	return nil
}

// remove deletes vi's filter s.
func (t *table) remove(vi uint32, s filter.Spec) error {
	c, err := classify(vi, s)
	if err != nil {
		return err
	}
	if c.sniff {
		if t.sniff.Ifindex == 0 || t.sniff.VI != vi {
			return fmt.Errorf("remove sniff for VI %d: not installed: %w", vi, unix.ENOENT)
		}
		return t.setSniff(sniffCfg{})
	}
	var errs []error
	found := false
	for _, k := range c.keys {
		err := t.removeKey(vi, k)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		found = true
		errs = append(errs, err)
	}
	if !found {
		return fmt.Errorf("remove filter %+v for VI %d: not installed: %w", s, vi, unix.ENOENT)
	}
	errs = append(errs, t.writeConfig())
	return errors.Join(errs...)
}

// removeVI deletes every filter that delivers to vi.
func (t *table) removeVI(vi uint32) error {
	var errs []error
	for k, v := range t.entries {
		if v.VI == vi || v.Mode == modeReplicate {
			if err := t.removeKey(vi, k); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, err)
			}
		}
	}
	if t.sniff.Ifindex != 0 && t.sniff.VI == vi {
		errs = append(errs, t.setSniff(sniffCfg{}))
	}
	errs = append(errs, t.writeConfig())
	return errors.Join(errs...)
}

func (t *table) installSniff(vi uint32, promisc bool) error {
	if t.sniff.Ifindex != 0 {
		if t.sniff.VI == vi {
			return fmt.Errorf("sniff already installed for VI %d: %w", vi, unix.EEXIST)
		}
		return fmt.Errorf("sniff is owned by VI %d: %w", t.sniff.VI, unix.EBUSY)
	}
	ifx, err := t.viIfindex(vi)
	if err != nil {
		return err
	}
	c := sniffCfg{Ifindex: uint32(ifx), VI: vi}
	if promisc {
		c.Promisc = 1
	}
	return t.setSniff(c)
}

func (t *table) setSniff(c sniffCfg) error {
	if err := t.m.sniff.Put(uint32(0), c); err != nil {
		return fmt.Errorf("write sniff config: %w", err)
	}
	t.sniff = c
	return nil
}

// hits returns the hit counter of the filter (summed over its keys; a
// replicated filter counts deliveries to the whole group).
func (t *table) hits(vi uint32, s filter.Spec) (uint64, error) {
	c, err := classify(vi, s)
	if err != nil {
		return 0, err
	}
	var sum uint64
	found := false
	for _, k := range c.keys {
		v, ok := t.entries[k]
		if !ok {
			continue
		}
		if v.Mode == modeReplicate {
			if _, ok := t.members[v.Group][vi]; !ok {
				continue
			}
		} else if v.VI != vi {
			continue
		}
		found = true
		n, err := t.m.readHits(v.Slot)
		if err != nil {
			return 0, fmt.Errorf("read hits of filter %+v: %w", s, err)
		}
		sum += n
	}
	if !found {
		return 0, fmt.Errorf("filter %+v for VI %d: not installed: %w", s, vi, unix.ENOENT)
	}
	return sum, nil
}
