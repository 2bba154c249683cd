package viservice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
)

// Ring defaults. ef_vi's are 512; the software path delivers in bursts (a
// whole softirq batch at once), so the RX ring is deeper by default to avoid
// the no-descriptor drops a prototype saw under flood.
const (
	DefaultRxqCap = 4096
	DefaultTxqCap = 1024
	maxRingCap    = 1 << 16
)

type memRegion struct {
	id   broker.MemRegID
	pd   broker.PDID
	file *os.File
	size uint64
	refs int // VIs using it
	// charged: its bytes moved to the socket that pins them (account.go);
	// otherwise they count as a registered region until freed.
	charged bool
}

// checkPopulated refuses a region whose pages the client has not allocated:
// the kernel would allocate them when the agent pins the UMEM, charging them
// to the agent's memory cgroup instead of the pod's (see the package doc).
func checkPopulated(m *memRegion) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(m.file.Fd()), &st); err != nil {
		return fmt.Errorf("alloc VI: memory region %d: fstat: %w", m.id, err)
	}
	if have := uint64(st.Blocks) * 512; have < m.size {
		return broker.Errorf(syscall.EINVAL, "alloc VI: memory region %d has %d of its %d bytes populated; the client populates it (fallocate, as broker.Client.RegisterMemory does) before ALLOC_VI so the pages are charged to the pod's memory limit", m.id, have, m.size)
	}
	return nil
}

// releaseMem uncounts a region that never backed a VI.
func (s *session) releaseMem(m *memRegion) {
	if !m.charged {
		s.alloc.releaseRegion(m.size)
	}
}

type vi struct {
	id     broker.VIID
	slot   uint32
	mem    *memRegion
	sock   *xsk.Socket
	dpVI   *dataplane.VI
	cookie map[broker.FilterCookie]filter.Spec
}

type session struct {
	alloc  *Allocation
	peer   broker.Peer
	limits Limits
	log    *slog.Logger

	nextPD, nextMem uint32
	pds             map[broker.PDID]bool
	mems            map[broker.MemRegID]*memRegion
	vis             map[broker.VIID]*vi
}

func (s *session) Hello(_ context.Context, _ *broker.HelloRequest) (*broker.HelloReply, error) {
	p := s.alloc.Policy()
	return &broker.HelloReply{
		Caps:    broker.AllCaps,
		MTU:     uint32(s.alloc.Port.MTU),
		MAC:     s.alloc.Port.MAC,
		Pool:    s.alloc.Pool,
		IfName:  s.alloc.Port.Name,
		Devices: s.alloc.Devices,
		Addrs:   p.OwnIPs,
	}, nil
}

func (s *session) AllocPD(_ context.Context, req *broker.AllocPDRequest) (*broker.AllocPDReply, error) {
	if len(s.pds) >= s.limits.MaxPDs {
		return nil, broker.Errorf(syscall.ENOMEM, "this client already holds %d protection domains (the limit); free one first", len(s.pds))
	}
	s.nextPD++
	id := broker.PDID(s.nextPD)
	s.pds[id] = true
	return &broker.AllocPDReply{PD: id}, nil
}

func (s *session) RegisterMemory(_ context.Context, req *broker.RegMemRequest) (*broker.RegMemReply, broker.FD, error) {
	if !s.pds[req.PD] {
		return nil, broker.FD{}, broker.Errorf(syscall.EINVAL, "register memory: no protection domain %d in this session", req.PD)
	}
	if len(s.mems) >= s.limits.MaxMemReg {
		return nil, broker.FD{}, broker.Errorf(syscall.ENOMEM, "register memory: already %d regions (the limit)", len(s.mems))
	}
	// A UMEM must be a whole number of pages; 2 KiB buffers come in pairs.
	size := (req.Size + uint64(os.Getpagesize()) - 1) &^ uint64(os.Getpagesize()-1)
	if err := s.alloc.chargeRegion(size); err != nil {
		return nil, broker.FD{}, err
	}
	f, err := xsk.NewMemfd(fmt.Sprintf("efvi-%s", s.alloc.Pool), int(size))
	if err != nil {
		s.alloc.releaseRegion(size)
		return nil, broker.FD{}, fmt.Errorf("register memory of %d bytes: %w", size, err)
	}
	s.nextMem++
	m := &memRegion{id: broker.MemRegID(s.nextMem), pd: req.PD, file: f, size: size}
	s.mems[m.id] = m
	return &broker.RegMemReply{MemReg: m.id, ChunkSize: xsk.DefaultFrameSize, Size: size}, broker.LendFD(int(f.Fd())), nil
}

// ringSize maps an ef_vi capacity request (-1 default, 0 none) to a ring size.
func ringSize(req int32, def uint32, name string) (uint32, error) {
	switch {
	case req == -1:
		return def, nil
	case req == 0:
		return 0, broker.Errorf(syscall.EINVAL, "%s capacity 0 (no ring) is not supported by the software backend yet; ask for -1 (default) or a size", name)
	case req < 0 || req > maxRingCap:
		return 0, broker.Errorf(syscall.EINVAL, "%s capacity %d out of range 1..%d", name, req, maxRingCap)
	}
	return 1 << bits.Len32(uint32(req)-1), nil // round up to a power of two, as EF10 does
}

func (s *session) AllocVI(ctx context.Context, req *broker.AllocVIRequest) (*broker.AllocVIReply, broker.FD, error) {
	if !s.pds[req.PD] {
		return nil, broker.FD{}, broker.Errorf(syscall.EINVAL, "alloc VI: no protection domain %d in this session", req.PD)
	}
	m := s.mems[req.MemReg]
	if m == nil || m.pd != req.PD {
		return nil, broker.FD{}, broker.Errorf(syscall.EINVAL, "alloc VI: no memory region %d registered with protection domain %d", req.MemReg, req.PD)
	}
	if m.refs > 0 {
		return nil, broker.FD{}, broker.Errorf(syscall.EBUSY, "alloc VI: memory region %d already backs a VI; the software backend gives each VI its own region (an AF_XDP UMEM per socket)", req.MemReg)
	}
	rx, err := ringSize(req.RxqCap, DefaultRxqCap, "rxq")
	if err != nil {
		return nil, broker.FD{}, err
	}
	tx, err := ringSize(req.TxqCap, DefaultTxqCap, "txq")
	if err != nil {
		return nil, broker.FD{}, err
	}
	evq, err := ringSize(req.EvqCap, rx, "evq")
	if err != nil {
		return nil, broker.FD{}, err
	}
	if err := checkPopulated(m); err != nil {
		return nil, broker.FD{}, err
	}
	if err := s.alloc.checkVI(); err != nil {
		return nil, broker.FD{}, err
	}
	if m.charged {
		// Its bytes went to an earlier VI's socket, which may still live
		// (in the pod): a new socket pins the pages again.
		if err := s.alloc.chargeRegion(m.size); err != nil {
			return nil, broker.FD{}, err
		}
		m.charged = false
	}
	slot, ok := s.alloc.claimSlot()
	if !ok {
		return nil, broker.FD{}, broker.Errorf(syscall.EBUSY, "alloc VI: every VI slot of this allocation (%v) is in use; free one or request more %s VIs", s.alloc.Devices, s.alloc.Pool)
	}
	fail := func(err error) (*broker.AllocVIReply, broker.FD, error) {
		s.alloc.releaseSlot(slot)
		if derr := s.alloc.destroyIfIdle(slot); derr != nil {
			s.log.Error("clean up VI after failed alloc", "slot", slot, "err", derr)
		}
		return nil, broker.FD{}, err
	}
	dv, err := s.alloc.ensureVI(ctx, slot)
	if err != nil {
		return fail(fmt.Errorf("alloc VI: %w", err))
	}
	sock, err := xsk.Create(xsk.Config{
		Ifindex: dv.PeerIfindex(),
		UMEM:    xsk.UMEMConfig{NumFrames: uint32(m.size / xsk.DefaultFrameSize)},
		Mem:     m.file,
		RxSize:  evq, FillSize: rx, TxSize: tx, CompSize: tx,
		TxBudget: tx,
	})
	if err != nil {
		return fail(fmt.Errorf("alloc VI slot %d: AF_XDP socket on %s: %w", slot, dv.PeerName(), err))
	}
	ino, err := xsk.Inode(sock.FD)
	if err != nil {
		sock.Close()
		return fail(fmt.Errorf("alloc VI slot %d: %w", slot, err))
	}
	// From here the UMEM is pinned for as long as the socket lives.
	s.alloc.chargeXSK(ino, m.size)
	m.charged = true
	if err := dv.AttachXSK(int(sock.FD.Fd())); err != nil {
		sock.Close()
		return fail(fmt.Errorf("alloc VI slot %d: attach socket: %w", slot, err))
	}
	v := &vi{id: broker.VIID(slot + 1), slot: slot, mem: m, sock: sock, dpVI: dv, cookie: map[broker.FilterCookie]filter.Spec{}}
	s.vis[v.id] = v
	s.alloc.trackSocket(slot, sock)
	m.refs++
	g := sock.Geometry
	s.log.Info("VI allocated", "vi", slot, "veth", dv.PeerName(), "rx", rx, "tx", tx, "evq", evq)
	return &broker.AllocVIReply{VI: v.id, Geometry: broker.Geometry{
		QueueID: g.QueueID, EvqSize: evq, RxSize: g.RxSize, TxSize: g.TxSize,
		FillSize: g.FillSize, CompSize: g.CompSize, FrameSize: g.FrameSize, Headroom: g.Headroom,
	}}, broker.LendFD(int(sock.FD.Fd())), nil
}

func (s *session) vi(id broker.VIID) (*vi, error) {
	v := s.vis[id]
	if v == nil {
		return nil, broker.Errorf(syscall.EINVAL, "no VI %d in this session", id)
	}
	return v, nil
}

func (s *session) FilterAdd(_ context.Context, req *broker.FilterAddRequest) (*broker.FilterAddReply, error) {
	v, err := s.vi(req.VI)
	if err != nil {
		return nil, err
	}
	pol := s.alloc.Policy()
	if err := s.alloc.chargeFilter(); err != nil {
		return nil, err
	}
	added := false
	defer func() {
		if !added {
			s.alloc.releaseFilters(1)
		}
	}()
	spec, err := filter.ParseWithDefaultHost(req.Spec, defaultHost(pol))
	if err != nil {
		if !defaultHost(pol).IsValid() {
			return nil, fmt.Errorf("filter %q: %w (%v)", req.Spec, err, errNoAddrs)
		}
		return nil, err
	}
	spec.Flags |= filter.Flags(req.Flags)
	cookie, err := s.alloc.Port.AddFilter(filter.VIID(v.slot), spec, pol)
	if err != nil {
		return nil, err
	}
	v.cookie[broker.FilterCookie(cookie)] = spec
	added = true
	s.log.Info("filter added", "vi", v.slot, "filter", spec.String(), "cookie", cookie)
	return &broker.FilterAddReply{Cookie: broker.FilterCookie(cookie)}, nil
}

func (s *session) FilterDel(_ context.Context, req *broker.FilterDelRequest) error {
	v, err := s.vi(req.VI)
	if err != nil {
		return err
	}
	if _, own := v.cookie[req.Cookie]; !own {
		return broker.Errorf(syscall.ENOENT, "VI %d has no filter with cookie %d added by this client (filters the node installed for the pod are removed by the node)", v.slot, req.Cookie)
	}
	if err := s.alloc.Port.DelFilter(filter.VIID(v.slot), filter.Cookie(req.Cookie)); err != nil {
		return err
	}
	delete(v.cookie, req.Cookie)
	s.alloc.releaseFilters(1)
	return nil
}

func (s *session) Stats(_ context.Context, req *broker.StatsRequest) (*broker.StatsReply, error) {
	v, err := s.vi(req.VI)
	if err != nil {
		return nil, err
	}
	c, err := s.alloc.Port.Plane.VICounters(v.slot)
	if err != nil {
		return nil, fmt.Errorf("stats of VI %d: %w", v.slot, err)
	}
	var ks xsk.Stats
	if err := xsk.Statistics(int(v.sock.FD.Fd()), &ks); err != nil {
		return nil, fmt.Errorf("stats of VI %d socket: %w", v.slot, err)
	}
	return &broker.StatsReply{Stats: []broker.Stat{
		{Name: "rx_packets", Value: c.RxPackets},
		{Name: "rx_bytes", Value: c.RxBytes},
		{Name: "tx_packets", Value: c.TxPackets},
		{Name: "tx_bytes", Value: c.TxBytes},
		{Name: "tx_spoof_drops", Value: c.TxSpoofDrops},
		{Name: "rx_redirect_errors", Value: c.RxRedirectErrors},
		{Name: "rx_nodesc_drops", Value: ks.RxFillRingEmptyDescs},
		{Name: "rx_ring_full", Value: ks.RxRingFull},
		{Name: "rx_dropped", Value: ks.RxDropped},
		{Name: "rx_invalid_descs", Value: ks.RxInvalidDescs},
		{Name: "tx_invalid_descs", Value: ks.TxInvalidDescs},
	}}, nil
}

// freeVI detaches the VI's socket from the data plane, removes the filters
// this client added, drops the agent's socket reference and releases the
// slot; the slot's veths go too unless CNI filters still use them.
func (s *session) freeVI(v *vi) error {
	var errs []error
	if err := v.dpVI.DetachXSK(); err != nil {
		errs = append(errs, err)
	}
	cookies := make([]filter.Cookie, 0, len(v.cookie))
	for c := range v.cookie {
		cookies = append(cookies, filter.Cookie(c))
	}
	s.alloc.untrackSocket(v.slot)
	errs = append(errs, s.alloc.Port.removeCookies(filter.VIID(v.slot), cookies), v.sock.Close())
	s.alloc.releaseFilters(len(cookies))
	v.mem.refs--
	delete(s.vis, v.id)
	s.alloc.releaseSlot(v.slot)
	errs = append(errs, s.alloc.destroyIfIdle(v.slot))
	s.log.Info("VI freed", "vi", v.slot)
	return errors.Join(errs...)
}

func (s *session) FreeVI(_ context.Context, req *broker.FreeVIRequest) error {
	v, err := s.vi(req.VI)
	if err != nil {
		return err
	}
	return s.freeVI(v)
}

func (s *session) FreeMem(_ context.Context, req *broker.FreeMemRequest) error {
	m := s.mems[req.MemReg]
	if m == nil {
		return broker.Errorf(syscall.EINVAL, "free memory: no region %d in this session", req.MemReg)
	}
	if m.refs > 0 {
		return broker.Errorf(syscall.EBUSY, "free memory: region %d still backs a VI; free the VI first", req.MemReg)
	}
	delete(s.mems, m.id)
	s.releaseMem(m)
	return m.file.Close()
}

func (s *session) FreePD(_ context.Context, req *broker.FreePDRequest) error {
	if !s.pds[req.PD] {
		return broker.Errorf(syscall.EINVAL, "free PD: no protection domain %d in this session", req.PD)
	}
	for _, m := range s.mems {
		if m.pd == req.PD {
			return broker.Errorf(syscall.EBUSY, "free PD %d: memory region %d is still registered with it", req.PD, m.id)
		}
	}
	delete(s.pds, req.PD)
	return nil
}

// Close frees everything the client held, unless the allocation is
// detached (agent shutdown): then it only drops the agent's references.
func (s *session) Close() error {
	var errs []error
	if s.alloc.isDetached() {
		for _, v := range s.vis {
			s.alloc.untrackSocket(v.slot)
			errs = append(errs, v.sock.Close())
		}
		for _, m := range s.mems {
			errs = append(errs, m.file.Close())
		}
		s.log.Info("session detached: VIs stay for the pod", "vis", len(s.vis))
		return errors.Join(errs...)
	}
	for _, v := range s.vis {
		errs = append(errs, s.freeVI(v))
	}
	for _, m := range s.mems {
		s.releaseMem(m)
		errs = append(errs, m.file.Close())
	}
	s.mems, s.pds = nil, nil
	if err := errors.Join(errs...); err != nil {
		s.log.Error("session close", "err", err)
		return err
	}
	s.log.Info("session closed")
	return nil
}

// Holding implements broker.Holder: a session holding a VI or memory is
// kept while idle (a pod's connection is silent while it uses its VI).
func (s *session) Holding() bool { return len(s.vis) > 0 || len(s.mems) > 0 }
