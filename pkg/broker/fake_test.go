package broker

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// fakeSession implements Session with real kernel objects: a memfd per memory
// region (lent: the session keeps it) and, per VI, one end of a socketpair
// (transferred: the server closes its copy) whose other end the session keeps.
type fakeSession struct {
	peer Peer

	mu      sync.Mutex
	next    uint32
	pds     map[PDID]bool
	mems    map[MemRegID]int // memfd, kept
	vis     map[VIID]int     // session end of the VI's socketpair, or -1
	filters map[FilterCookie]string
	sniff   bool

	// viFD makes the fd a VI passes; nil means a socketpair.
	viFD func() (keep, pass int, err error)

	closes atomic.Int32
	closed chan struct{}
}

func newFakeSession(p Peer) *fakeSession {
	return &fakeSession{
		peer: p, pds: map[PDID]bool{}, mems: map[MemRegID]int{}, vis: map[VIID]int{},
		filters: map[FilterCookie]string{}, closed: make(chan struct{}),
	}
}

func (s *fakeSession) id() uint32 { s.next++; return s.next }

func (s *fakeSession) Hello(_ context.Context, req *HelloRequest) (*HelloReply, error) {
	return &HelloReply{
		Caps: CapAFXDP | CapFilters | CapStats, MTU: 1500,
		MAC: [6]byte{0x02, 0, 0, 0, 0, 0x01}, Pool: "eth1", IfName: "eth1",
		Devices: []string{"eth1-vi0"},
		Addrs:   []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")},
	}, nil
}

func (s *fakeSession) AllocPD(_ context.Context, req *AllocPDRequest) (*AllocPDReply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Flags&^0x3 != 0 {
		return nil, Errorf(syscall.EINVAL, "pd flags %#x not supported", req.Flags)
	}
	id := PDID(s.id())
	s.pds[id] = true
	return &AllocPDReply{PD: id}, nil
}

func (s *fakeSession) RegisterMemory(_ context.Context, req *RegMemRequest) (*RegMemReply, FD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pds[req.PD] {
		return nil, FD{}, Errorf(syscall.EINVAL, "no PD %d", req.PD)
	}
	if req.Size > 64<<20 {
		return nil, FD{}, Errorf(syscall.ENOMEM, "%d bytes is more than this pod may lock", req.Size)
	}
	fd, err := unix.MemfdCreate("efvi-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, FD{}, err
	}
	if err := unix.Ftruncate(fd, int64(req.Size)); err != nil {
		unix.Close(fd)
		return nil, FD{}, err
	}
	id := MemRegID(s.id())
	s.mems[id] = fd
	return &RegMemReply{MemReg: id, ChunkSize: 2048, Size: req.Size}, LendFD(fd), nil
}

func (s *fakeSession) AllocVI(_ context.Context, req *AllocVIRequest) (*AllocVIReply, FD, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pds[req.PD] {
		return nil, FD{}, Errorf(syscall.EINVAL, "no PD %d", req.PD)
	}
	if _, ok := s.mems[req.MemReg]; !ok {
		return nil, FD{}, Errorf(syscall.EINVAL, "no memory region %d", req.MemReg)
	}
	mk := s.viFD
	if mk == nil {
		mk = func() (int, int, error) {
			p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			return p[0], p[1], err
		}
	}
	keep, pass, err := mk()
	if err != nil {
		return nil, FD{}, err
	}
	id := VIID(s.id())
	s.vis[id] = keep
	return &AllocVIReply{VI: id, Geometry: Geometry{QueueID: 0, EvqSize: 1024, RxSize: 512, TxSize: 512,
		FillSize: 1024, CompSize: 512, FrameSize: 2048, Headroom: 256}}, TransferFD(pass), nil
}

func (s *fakeSession) FilterAdd(_ context.Context, req *FilterAddRequest) (*FilterAddReply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.vis[req.VI]; !ok {
		return nil, Errorf(syscall.EINVAL, "no VI %d", req.VI)
	}
	switch {
	case strings.HasPrefix(req.Spec, "multicast-all"):
		return nil, Errorf(syscall.EPERM, "filter %q needs an explicit allowance", req.Spec)
	case strings.HasPrefix(req.Spec, "sniff"):
		if s.sniff {
			return nil, Errorf(syscall.EBUSY, "sniff already owned")
		}
		s.sniff = true
	}
	for _, f := range s.filters {
		if f == req.Spec {
			return nil, Errorf(syscall.EEXIST, "filter %q already installed", req.Spec)
		}
	}
	c := FilterCookie(uint64(s.id()) | 0xABC<<32)
	s.filters[c] = req.Spec
	return &FilterAddReply{Cookie: c}, nil
}

func (s *fakeSession) FilterDel(_ context.Context, req *FilterDelRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.filters[req.Cookie]; !ok {
		return Errorf(syscall.ENOENT, "no filter %#x", uint64(req.Cookie))
	}
	delete(s.filters, req.Cookie)
	return nil
}

func (s *fakeSession) Stats(_ context.Context, req *StatsRequest) (*StatsReply, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.vis[req.VI]; !ok {
		return nil, Errorf(syscall.EINVAL, "no VI %d", req.VI)
	}
	return &StatsReply{Stats: []Stat{{"rx_packets", 42}, {"rx_nodesc_drops", 7}, {"filters", uint64(len(s.filters))}}}, nil
}

func (s *fakeSession) FreeVI(_ context.Context, req *FreeVIRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd, ok := s.vis[req.VI]
	if !ok {
		return Errorf(syscall.EINVAL, "no VI %d", req.VI)
	}
	if fd >= 0 {
		unix.Close(fd)
	}
	delete(s.vis, req.VI)
	return nil
}

func (s *fakeSession) FreeMem(_ context.Context, req *FreeMemRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fd, ok := s.mems[req.MemReg]
	if !ok {
		return Errorf(syscall.EINVAL, "no memory region %d", req.MemReg)
	}
	unix.Close(fd)
	delete(s.mems, req.MemReg)
	return nil
}

func (s *fakeSession) FreePD(_ context.Context, req *FreePDRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pds[req.PD] {
		return Errorf(syscall.EINVAL, "no PD %d", req.PD)
	}
	delete(s.pds, req.PD)
	return nil
}

// held reports how many resources the session still holds.
func (s *fakeSession) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pds) + len(s.mems) + len(s.vis) + len(s.filters)
}

func (s *fakeSession) Close() error {
	s.mu.Lock()
	for id, fd := range s.vis {
		if fd >= 0 {
			unix.Close(fd)
		}
		delete(s.vis, id)
	}
	for id, fd := range s.mems {
		unix.Close(fd)
		delete(s.mems, id)
	}
	clear(s.pds)
	clear(s.filters)
	s.mu.Unlock()
	if s.closes.Add(1) == 1 {
		close(s.closed)
	}
	return nil
}

// fakeFactory records every session and peer it saw.
type fakeFactory struct {
	mu       sync.Mutex
	sessions []*fakeSession
	created  chan *fakeSession
	viFD     func() (keep, pass int, err error)
}

func newFakeFactory() *fakeFactory { return &fakeFactory{created: make(chan *fakeSession, 64)} }

func (f *fakeFactory) NewSession(_ context.Context, p Peer) (Session, error) {
	s := newFakeSession(p)
	s.viFD = f.viFD
	f.mu.Lock()
	f.sessions = append(f.sessions, s)
	f.mu.Unlock()
	select {
	case f.created <- s:
	default:
	}
	return s, nil
}

func (f *fakeFactory) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

// Holding implements Holder: a session holding anything is kept while idle.
func (s *fakeSession) Holding() bool { return s.held() > 0 }
