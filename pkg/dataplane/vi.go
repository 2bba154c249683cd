package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// VIConfig describes a VI to create.
type VIConfig struct {
	ID     uint32       // VI index, < Limits.MaxVIs
	SrcMAC [6]byte      // the only source MAC the VI may send from
	SrcIPs []netip.Addr // the only IPv4/IPv6 sources it may send from
}

// VI is one software VI: a veth pair whose peer end (v<N>p) carries the VI's
// AF_XDP socket. Receive: port → v<N> → v<N>p → XSK. Transmit: XSK → v<N>p
// → v<N> (source check) → port.
type VI struct {
	port        *Port
	id          uint32
	name, peer  string
	ifindex     int
	peerIfindex int
	rx, tx      link.Link
	progs       viProgs  // the programs rx and tx run, built with consts
	consts      viConsts // what the programs were built with
	mac         [6]byte
	srcs        []netip.Addr
}

// ID is the VI index.
func (v *VI) ID() uint32 { return v.id }

// Name is the VI's own veth (v<N>), where its transmitted frames arrive.
func (v *VI) Name() string { return v.name }

// Ifindex is the ifindex of Name.
func (v *VI) Ifindex() int { return v.ifindex }

// PeerName is the veth the VI's XSK binds to (queue 0).
func (v *VI) PeerName() string { return v.peer }

// PeerIfindex is the ifindex of PeerName.
func (v *VI) PeerIfindex() int { return v.peerIfindex }

// Sources returns the allowed source MAC and IPs.
func (v *VI) Sources() ([6]byte, []netip.Addr) {
	v.port.mu.Lock()
	defer v.port.mu.Unlock()
	return v.mac, append([]netip.Addr(nil), v.srcs...)
}

func (v *VI) closeLinks() {
	for _, l := range []link.Link{v.rx, v.tx} {
		if l != nil {
			l.Close()
		}
	}
	v.progs.close()
}

// attachPrograms builds the VI's programs for c and attaches (or, for an
// adopted VI, re-points) its pinned links to them.
func (p *Port) attachPrograms(v *VI, c viConsts) (err error) {
	if v.progs, err = loadVIProgs(p.m, c); err != nil {
		return err
	}
	v.consts = c
	// Receiving end first: veth's ndo_xdp_xmit drops frames unless the
	// receiving peer has an XDP program.
	if v.rx, err = p.pinnedLink(p.linkName(v.id, "rx"), v.progs.rx, v.peerIfindex, attachXDP); err != nil {
		return err
	}
	if v.tx, err = p.pinnedLink(p.linkName(v.id, "tx"), v.progs.tx, v.ifindex, attachXDP); err != nil {
		return err
	}
	return nil
}

// swapTxProgram rebuilds the VI's TX program for c and updates its link to
// it: one atomic pointer swap for frames in flight.
func (p *Port) swapTxProgram(v *VI, c viConsts) error {
	prog, err := loadVITx(p.m, c)
	if err != nil {
		return err
	}
	if err := v.tx.Update(prog); err != nil {
		prog.Close()
		return fmt.Errorf("update TX program: %w", err)
	}
	v.progs.tx.Close()
	v.progs.tx, v.consts = prog, c
	return nil
}

func (p *Port) linkName(id uint32, dir string) string {
	return "vi" + strconv.FormatUint(uint64(id), 10) + "_" + dir
}

// viIfindexLocked is the table's view of VIs (p.mu held).
func (p *Port) viIfindexLocked(id uint32) (int, error) {
	v, ok := p.vis[id]
	if !ok {
		return 0, fmt.Errorf("VI %d: no such VI: %w", id, unix.ENODEV)
	}
	return v.ifindex, nil
}

// VI returns VI id, including VIs adopted from a previous agent.
func (p *Port) VI(id uint32) (*VI, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.vis[id]
	return v, ok
}

// VIs lists the VI ids.
func (p *Port) VIs() []uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]uint32, 0, len(p.vis))
	for id := range p.vis {
		ids = append(ids, id)
	}
	return ids
}

// CreateVI creates the VI's veth pair, attaches its programs and opens it for
// filters. Until AttachXSK, frames delivered to it go to v<N>p's kernel stack
// (the xskmap lookup falls back to XDP_PASS), where tests can observe them
// with an AF_PACKET socket; the kernel drops them there (no address).
func (p *Port) CreateVI(ctx context.Context, c VIConfig) (_ *VI, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return nil, err
	}
	if c.ID >= p.cfg.Limits.MaxVIs {
		return nil, fmt.Errorf("create VI %d: id out of range 0..%d (raise Limits.MaxVIs): %w", c.ID, p.cfg.Limits.MaxVIs-1, unix.EINVAL)
	}
	if _, ok := p.vis[c.ID]; ok {
		return nil, fmt.Errorf("create VI %d: exists: %w", c.ID, unix.EEXIST)
	}
	if err := checkSources(c.SrcMAC, c.SrcIPs); err != nil {
		return nil, fmt.Errorf("create VI %d: %w", c.ID, err)
	}
	v := &VI{port: p, id: c.ID, name: vethName(p.cfg.VethPrefix, c.ID), peer: vethPeerName(p.cfg.VethPrefix, c.ID)}
	if _, err := p.nl.linkByName(v.name); err == nil {
		return nil, fmt.Errorf("create VI %d: interface %s already exists (left over? delete it): %w", c.ID, v.name, unix.EEXIST)
	}
	portLink, err := p.nl.linkByIndex(p.ifindex)
	if err != nil {
		return nil, fmt.Errorf("create VI %d: port: %w", c.ID, err)
	}
	if err := p.nl.addVeth(v.name, v.peer, portLink.Attrs().MTU); err != nil {
		return nil, fmt.Errorf("create VI %d: add veth %s/%s: %w", c.ID, v.name, v.peer, err)
	}
	defer func() {
		if err != nil {
			p.teardownVI(v)
		}
	}()
	var la, lb netlink.Link
	if la, err = p.nl.linkByName(v.name); err != nil {
		return nil, fmt.Errorf("create VI %d: %w", c.ID, err)
	}
	if lb, err = p.nl.linkByName(v.peer); err != nil {
		return nil, fmt.Errorf("create VI %d: %w", c.ID, err)
	}
	v.ifindex, v.peerIfindex = la.Attrs().Index, lb.Attrs().Index
	for _, n := range []string{v.name, v.peer} {
		if err := p.nl.disableIPv6(n); err != nil {
			return nil, fmt.Errorf("create VI %d: disable IPv6 on %s: %w", c.ID, n, err)
		}
	}
	if err := p.attachPrograms(v, newVIConsts(c.ID, c.SrcMAC, c.SrcIPs)); err != nil {
		return nil, fmt.Errorf("create VI %d: %w", c.ID, err)
	}
	for _, l := range []netlink.Link{la, lb} {
		if err := p.nl.setUp(l); err != nil {
			return nil, fmt.Errorf("create VI %d: bring up %s: %w", c.ID, l.Attrs().Name, err)
		}
	}
	if err := p.m.resetCounters(c.ID); err != nil {
		return nil, err
	}
	if err := p.writeSources(v, c.SrcMAC, c.SrcIPs); err != nil {
		return nil, fmt.Errorf("create VI %d: %w", c.ID, err)
	}
	if err := p.m.ifToVI.Put(uint32(v.peerIfindex), c.ID); err != nil {
		return nil, fmt.Errorf("create VI %d: %w", c.ID, err)
	}
	if err := p.m.viDev.Put(c.ID, uint32(v.ifindex)); err != nil {
		return nil, fmt.Errorf("create VI %d: add to devmap: %w", c.ID, err)
	}
	p.vis[c.ID] = v
	p.log.Info("VI created", "vi", c.ID, "veth", v.name, "peer", v.peer)
	return v, nil
}

func checkSources(mac [6]byte, ips []netip.Addr) error {
	if mac[0]&1 != 0 {
		return fmt.Errorf("source MAC %x is multicast: %w", mac, unix.EINVAL)
	}
	for _, a := range ips {
		if !a.IsValid() {
			return fmt.Errorf("invalid source IP in %v: %w", ips, unix.EINVAL)
		}
	}
	return nil
}

func toSrcKey(vi uint32, a netip.Addr) srcKey {
	k := srcKey{VI: vi}
	a = a.Unmap()
	if a.Is4() {
		k.Family = 4
		b := a.As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = 6
		k.Addr = a.As16()
	}
	return k
}

// writeSources replaces v's allowed sources in the maps and its TX
// program (p.mu held): new sources are allowed before the program that
// accepts them goes live, stale ones forbidden after it does.
func (p *Port) writeSources(v *VI, mac [6]byte, ips []netip.Addr) error {
	want := map[srcKey]bool{}
	for _, a := range ips {
		want[toSrcKey(v.id, a)] = true
	}
	for k := range want {
		if err := p.m.allowed.Put(k, uint32(1)); err != nil {
			return fmt.Errorf("allow source %v: %w", k, err)
		}
	}
	if c := newVIConsts(v.id, mac, ips); v.tx != nil && !c.equal(v.consts) {
		if err := p.swapTxProgram(v, c); err != nil {
			return err
		}
	}
	for _, a := range v.srcs {
		if k := toSrcKey(v.id, a); !want[k] {
			if err := p.m.allowed.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("forbid source %v: %w", a, err)
			}
		}
	}
	if err := p.m.txCfg.Put(uint32(v.ifindex), txCfg{MAC: mac, VI: v.id}); err != nil {
		return fmt.Errorf("set source MAC: %w", err)
	}
	v.mac, v.srcs = mac, append([]netip.Addr(nil), ips...)
	return nil
}

// SetSources replaces the source MAC and IPs the VI may transmit from.
func (v *VI) SetSources(mac [6]byte, ips []netip.Addr) error {
	if err := checkSources(mac, ips); err != nil {
		return fmt.Errorf("VI %d: %w", v.id, err)
	}
	v.port.mu.Lock()
	defer v.port.mu.Unlock()
	if err := v.port.usable(); err != nil {
		return err
	}
	if err := v.port.writeSources(v, mac, ips); err != nil {
		return fmt.Errorf("VI %d: %w", v.id, err)
	}
	return nil
}

// AttachXSK puts an AF_XDP socket bound to PeerName queue 0 into the xskmap.
// The kernel rejects an fd that is not an XSK; the fd is not probed.
func (v *VI) AttachXSK(fd int) error {
	if fd < 0 {
		return fmt.Errorf("VI %d: attach XSK: bad fd %d: %w", v.id, fd, unix.EBADF)
	}
	v.port.mu.Lock()
	defer v.port.mu.Unlock()
	if err := v.port.usable(); err != nil {
		return err
	}
	if err := v.port.m.xsks.Put(v.id, uint32(fd)); err != nil {
		return fmt.Errorf("VI %d: attach XSK fd %d: %w", v.id, fd, err)
	}
	return nil
}

// DetachXSK removes the VI's XSK from the xskmap.
func (v *VI) DetachXSK() error {
	v.port.mu.Lock()
	defer v.port.mu.Unlock()
	if err := v.port.usable(); err != nil {
		return err
	}
	if err := v.port.m.xsks.Delete(v.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("VI %d: detach XSK: %w", v.id, err)
	}
	return nil
}

// DestroyVI removes the VI's filters, map entries, links and veths.
func (p *Port) DestroyVI(id uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	return p.destroyVILocked(id)
}

func (p *Port) destroyVILocked(id uint32) error {
	v, ok := p.vis[id]
	if !ok {
		return fmt.Errorf("destroy VI %d: no such VI: %w", id, unix.ENODEV)
	}
	err := p.t.removeVI(id)
	delete(p.vis, id)
	return errors.Join(err, p.teardownVI(v))
}

// teardownVI removes everything of v but its filters.
func (p *Port) teardownVI(v *VI) error {
	var errs []error
	del := func(m *ebpf.Map, k any) {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	del(p.m.viDev, v.id)
	del(p.m.xsks, v.id)
	if v.peerIfindex != 0 {
		del(p.m.ifToVI, uint32(v.peerIfindex))
	}
	if v.ifindex != 0 {
		del(p.m.txCfg, uint32(v.ifindex))
	}
	var k srcKey
	var val uint32
	var stale []srcKey
	it := p.m.allowed.Iterate()
	for it.Next(&k, &val) {
		if k.VI == v.id {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		del(p.m.allowed, k)
	}
	for _, l := range []link.Link{v.rx, v.tx} {
		if l != nil {
			_ = l.Unpin()
		}
	}
	v.closeLinks()
	for _, d := range []string{"rx", "tx"} {
		p.unpinLink(p.linkName(v.id, d))
	}
	if l, err := p.nl.linkByName(v.name); err == nil {
		if err := p.nl.del(l); err != nil {
			errs = append(errs, fmt.Errorf("delete veth %s: %w", v.name, err))
		}
	}
	return errors.Join(errs...)
}

// adoptVIs rebuilds the VI set from the maps and pinned links of a previous
// agent (p.mu held or not yet shared).
func (p *Port) adoptVIs() error {
	var peerIfx, id uint32
	found := map[uint32]uint32{}
	it := p.m.ifToVI.Iterate()
	for it.Next(&peerIfx, &id) {
		found[id] = peerIfx
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read VI map: %w", err)
	}
	for id, peerIfx := range found {
		v := &VI{port: p, id: id, name: vethName(p.cfg.VethPrefix, id), peer: vethPeerName(p.cfg.VethPrefix, id), peerIfindex: int(peerIfx)}
		la, err := p.nl.linkByName(v.name)
		lb, err2 := p.nl.linkByName(v.peer)
		if err != nil || err2 != nil || lb.Attrs().Index != int(peerIfx) {
			p.log.Warn("VI veth vanished; dropping the VI", "vi", id, "veth", v.name)
			_ = p.t.removeVI(id)
			_ = p.teardownVI(v)
			continue
		}
		v.ifindex = la.Attrs().Index
		var tc txCfg
		if err := p.m.txCfg.Lookup(uint32(v.ifindex), &tc); err == nil {
			v.mac = tc.MAC
		}
		var k srcKey
		var one uint32
		sit := p.m.allowed.Iterate()
		for sit.Next(&k, &one) {
			if k.VI != id {
				continue
			}
			if k.Family == 4 {
				v.srcs = append(v.srcs, netip.AddrFrom4([4]byte(k.Addr[:4])))
			} else {
				v.srcs = append(v.srcs, netip.AddrFrom16(k.Addr))
			}
		}
		if err := p.attachPrograms(v, newVIConsts(id, v.mac, v.srcs)); err != nil {
			v.closeLinks()
			return fmt.Errorf("adopt VI %d: %w", id, err)
		}
		// An earlier agent may have kept the devmap in another map.
		if err := p.m.viDev.Put(id, uint32(v.ifindex)); err != nil {
			v.closeLinks()
			return fmt.Errorf("adopt VI %d: add to devmap: %w", id, err)
		}
		p.vis[id] = v
	}
	return nil
}
