package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// DefaultBPFFS is where bpffs is normally mounted.
const DefaultBPFFS = "/sys/fs/bpf"

// EnsureBPFFS makes sure path is a mounted bpffs, mounting one there (mode
// 0700) if it is not. It checks the filesystem magic with statfs(2).
func EnsureBPFFS(path string) error {
	if ok, err := isBPFFS(path); err == nil && ok {
		return nil
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", path, err)
	}
	if err := unix.Mount("bpffs", path, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", path, err)
	}
	ok, err := isBPFFS(path)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s is still not a bpffs after mounting one", path)
	}
	return nil
}

func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// PortConfig says which netdev plays the Solarflare port and where the data
// plane keeps its pins.
type PortConfig struct {
	Ifname string // the port netdev
	// PinDir is this port's own directory on a bpffs, e.g.
	// /sys/fs/bpf/efvi/eth0. When it is under /sys/fs/bpf, bpffs is mounted
	// there if needed.
	PinDir string
	// VethPrefix names the VI veths: <prefix>v<N> and <prefix>v<N>p. The
	// longest name must fit IFNAMSIZ-1 = 15 bytes.
	VethPrefix string
	Logger     *slog.Logger
	Limits     Limits // zero = defaults
}

// Port is the software data plane of one port: an XDP program steering
// filtered traffic to VIs, a TCX program for sniffing, and the VIs' veths.
// Its methods are safe for concurrent use.
type Port struct {
	mu      sync.Mutex
	cfg     PortConfig
	log     *slog.Logger
	nl      netOps
	ifindex int
	m       *maps
	p       *progs
	t       *table
	xdp     link.Link
	tcx     link.Link
	vis     map[uint32]*VI
	closed  bool
}

// Open attaches the data plane to cfg.Ifname, or re-adopts the one a previous
// agent left pinned in cfg.PinDir: maps and links are reused (links updated to
// freshly loaded programs) and existing VIs keep flowing.
func Open(ctx context.Context, cfg PortConfig) (*Port, error) {
	return open(ctx, cfg, netlinkOps{})
}

func open(ctx context.Context, cfg PortConfig, nl netOps) (_ *Port, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Port{cfg: cfg, log: cfg.Logger, nl: nl, vis: map[uint32]*VI{}}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.log = p.log.With("port", cfg.Ifname)
	defer func() {
		if err != nil {
			p.closeHandles()
		}
	}()
	if cfg.PinDir == DefaultBPFFS || strings.HasPrefix(cfg.PinDir, DefaultBPFFS+"/") {
		if err := EnsureBPFFS(DefaultBPFFS); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}
	if ok, err := isBPFFS(cfg.PinDir); err != nil {
		return nil, err
	} else if !ok {
		return nil, fmt.Errorf("pin directory %s is not on a bpffs: mount one (mount -t bpf bpffs /sys/fs/bpf) or pick a path under %s", cfg.PinDir, DefaultBPFFS)
	}
	l, err := nl.linkByName(cfg.Ifname)
	if err != nil {
		return nil, fmt.Errorf("port %s: %w", cfg.Ifname, err)
	}
	p.ifindex = l.Attrs().Index
	var adopted bool
	if p.m, adopted, err = openMaps(cfg.PinDir, cfg.Limits); err != nil {
		return nil, err
	}
	if p.p, err = loadProgs(p.m); err != nil {
		return nil, err
	}
	if err := p.m.portDev.Put(uint32(0), uint32(p.ifindex)); err != nil {
		return nil, fmt.Errorf("set port in devmap: %w", err)
	}
	p.t = newTable(p.m, cfg.Limits, p.viIfindexLocked)
	if adopted {
		if err := p.t.rebuild(); err != nil {
			return nil, err
		}
		if err := p.adoptVIs(); err != nil {
			return nil, err
		}
	} else if err := p.t.writeConfig(); err != nil {
		return nil, err
	}
	// Attach the port programs last, when the maps are consistent.
	if p.xdp, err = p.pinnedLink("port_xdp", p.p.port, p.ifindex, attachXDP); err != nil {
		return nil, err
	}
	if p.tcx, err = p.pinnedLink("port_tcx", p.p.sniff, p.ifindex, attachTCX); err != nil {
		return nil, err
	}
	p.log.Info("data plane ready", "ifindex", p.ifindex, "adopted", adopted, "vis", len(p.vis))
	return p, nil
}

func (c PortConfig) validate() error {
	if c.Ifname == "" {
		return errors.New("port config: Ifname is empty")
	}
	if !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("port config: PinDir %q must be an absolute path on a bpffs (e.g. %s/efvi/%s)", c.PinDir, DefaultBPFFS, c.Ifname)
	}
	if c.VethPrefix == "" || strings.ContainsAny(c.VethPrefix, "/ \t\n:") {
		return fmt.Errorf("port config: VethPrefix %q must be a non-empty interface-name prefix", c.VethPrefix)
	}
	longest := vethPeerName(c.VethPrefix, c.Limits.MaxVIs-1)
	if len(longest) > 15 {
		return fmt.Errorf("port config: VethPrefix %q too long: VI veth %q exceeds 15 bytes (shorten the prefix or lower Limits.MaxVIs)", c.VethPrefix, longest)
	}
	return nil
}

func vethName(prefix string, id uint32) string {
	return prefix + "v" + strconv.FormatUint(uint64(id), 10)
}
func vethPeerName(prefix string, id uint32) string { return vethName(prefix, id) + "p" }

type attachFunc func(prog *ebpf.Program, ifindex int) (link.Link, error)

func attachXDP(prog *ebpf.Program, ifindex int) (link.Link, error) {
	return link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex})
}

func attachTCX(prog *ebpf.Program, ifindex int) (link.Link, error) {
	return link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
}

// pinnedLink re-adopts the link pinned as name (updating it to prog) when it
// is still attached to ifindex, or attaches prog and pins the new link.
func (p *Port) pinnedLink(name string, prog *ebpf.Program, ifindex int, attach attachFunc) (link.Link, error) {
	path := filepath.Join(p.cfg.PinDir, "link_"+name)
	old, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		if linkIfindex(old) == ifindex {
			if uerr := old.Update(prog); uerr == nil {
				return old, nil
			} else {
				p.log.Warn("pinned link cannot be updated; re-attaching", "link", name, "err", uerr)
			}
		} else {
			p.log.Warn("pinned link is detached or on another device; re-attaching", "link", name)
		}
		_ = old.Unpin()
		old.Close()
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	l, err := attach(prog, ifindex)
	if err != nil {
		return nil, fmt.Errorf("attach %s to ifindex %d: %w", name, ifindex, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin link %s: %w", name, err)
	}
	return l, nil
}

func linkIfindex(l link.Link) int {
	info, err := l.Info()
	if err != nil {
		return -1
	}
	if x := info.XDP(); x != nil {
		return int(x.Ifindex)
	}
	if x := info.TCX(); x != nil {
		return int(x.Ifindex)
	}
	return -1
}

func (p *Port) unpinLink(name string) {
	_ = os.Remove(filepath.Join(p.cfg.PinDir, "link_"+name))
}

// Ifindex is the port's interface index.
func (p *Port) Ifindex() int { return p.ifindex }

// InstallFilter makes traffic matching s go to VI vi. Identical multicast
// filters from several VIs share delivery (replicate); any other key already
// present gets EEXIST, a second sniff owner EBUSY, tx-sniff EOPNOTSUPP, a
// spec the data plane cannot express EINVAL. Errors wrap unix.Errno.
func (p *Port) InstallFilter(vi uint32, s filter.Spec) (Handle, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return Handle{}, err
	}
	if _, ok := p.vis[vi]; !ok {
		return Handle{}, fmt.Errorf("install filter for VI %d: no such VI: %w", vi, unix.ENODEV)
	}
	if err := p.t.install(vi, s); err != nil {
		return Handle{}, err
	}
	p.log.Debug("filter installed", "vi", vi, "spec", fmt.Sprintf("%+v", s))
	return Handle{VI: vi, Spec: s}, nil
}

// RemoveFilter removes a filter installed by InstallFilter (by this agent or
// a previous one). A filter that is not installed gets ENOENT.
func (p *Port) RemoveFilter(h Handle) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	return p.t.remove(h.VI, h.Spec)
}

// FilterHits is how many frames the filter matched (for a replicated filter:
// how many the group received).
func (p *Port) FilterHits(h Handle) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return 0, err
	}
	return p.t.hits(h.VI, h.Spec)
}

// VICounters returns VI id's counters summed over CPUs.
func (p *Port) VICounters(id uint32) (Counters, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return Counters{}, err
	}
	if _, ok := p.vis[id]; !ok {
		return Counters{}, fmt.Errorf("counters of VI %d: no such VI: %w", id, unix.ENODEV)
	}
	return p.m.readCounters(id)
}

func (p *Port) usable() error {
	if p.closed {
		return fmt.Errorf("data plane of %s: %w", p.cfg.Ifname, os.ErrClosed)
	}
	return nil
}

// Close releases the agent's handles and leaves the pinned maps and links in
// place, so traffic keeps flowing until a new agent Opens the port again.
func (p *Port) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closeHandles()
	return nil
}

func (p *Port) closeHandles() {
	p.closed = true
	for _, v := range p.vis {
		v.closeLinks()
	}
	for _, l := range []link.Link{p.xdp, p.tcx} {
		if l != nil {
			l.Close()
		}
	}
	if p.t != nil {
		p.t.close()
	}
	if p.p != nil {
		p.p.close()
	}
	if p.m != nil {
		p.m.close()
	}
}

// Destroy removes everything: VIs (their veths and filters), links, pins and
// the pin directory. The port is left with no XDP or TCX program of ours.
func (p *Port) Destroy() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return err
	}
	var errs []error
	for id := range p.vis {
		errs = append(errs, p.destroyVILocked(id))
	}
	for _, l := range []link.Link{p.xdp, p.tcx} {
		if l != nil {
			if err := l.Unpin(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, p.m.unpin())
	p.closeHandles()
	if err := os.Remove(p.cfg.PinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove pin directory: %w", err))
	}
	return errors.Join(errs...)
}

// netOps is the netlink access the port needs (swappable in tests).
type netOps interface {
	linkByName(name string) (netlink.Link, error)
	linkByIndex(index int) (netlink.Link, error)
	addVeth(name, peer string, mtu int) error
	setUp(l netlink.Link) error
	del(l netlink.Link) error
	disableIPv6(name string) error
}

// netlinkOps uses vishvananda/netlink (its sockets are SOCK_CLOEXEC).
type netlinkOps struct{}

func (netlinkOps) linkByName(name string) (netlink.Link, error) { return netlink.LinkByName(name) }
func (netlinkOps) linkByIndex(i int) (netlink.Link, error)      { return netlink.LinkByIndex(i) }
func (netlinkOps) setUp(l netlink.Link) error                   { return netlink.LinkSetUp(l) }
func (netlinkOps) del(l netlink.Link) error                     { return netlink.LinkDel(l) }
func (netlinkOps) addVeth(name, peer string, mtu int) error {
	return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: peer})
}

// disableIPv6 keeps the kernel from giving a VI veth an IPv6 link-local
// address, so it sends no router solicitations or DAD probes from it (they
// would count as spoofed TX). It sets the address generation mode to none
// over netlink, before the link goes up, rather than writing
// /proc/sys/net/ipv6/conf/<if>/disable_ipv6: /proc/sys is read-only in a
// container without full privileges, and this keeps the agent's capability
// set explicit.
func (netlinkOps) disableIPv6(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	err = netlink.LinkSetIP6AddrGenMode(l, 1 /* IN6_ADDR_GEN_MODE_NONE */)
	if errors.Is(err, unix.EAFNOSUPPORT) {
		return nil // kernel without IPv6
	}
	return err
}

// RemoveVIVeths deletes every veth whose name is a VI veth of a prefix that
// keep does not name: prefixOf(name) returns a VI veth's prefix, or ok=false
// for a link that is not one. It is the sweep for VI veths whose port is
// gone (the port's data plane can no longer list them) and for uninstall,
// where keep is nil and every VI veth goes. It returns the names removed.
func RemoveVIVeths(prefixOf func(name string) (prefix string, ok bool), keep map[string]bool) ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var removed []string
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if _, isVeth := l.(*netlink.Veth); !isVeth {
			continue
		}
		prefix, ok := prefixOf(name)
		if !ok || keep[prefix] {
			continue
		}
		// Deleting one end removes its peer; the peer may already be gone.
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete VI veth %s: %w", name, err))
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}
