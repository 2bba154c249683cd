package xsk

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultFrameSize is the UMEM chunk size: ef_vi's 2 KiB packet buffer.
const DefaultFrameSize = 2048

// DefaultRingSize is the default size of each of the four rings.
const DefaultRingSize = 2048

// Seals applied by NewMemfd: the region can be neither shrunk nor grown, and
// the seals themselves cannot be changed.
const Seals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

// UMEMConfig describes the packet memory registered as a UMEM.
type UMEMConfig struct {
	// FrameSize is the chunk size, a power of two in [2048, page size].
	// 0 means DefaultFrameSize.
	FrameSize uint32
	// Headroom is extra space the kernel leaves in front of every received
	// frame, on top of XDP_PACKET_HEADROOM (256 bytes in copy mode).
	Headroom uint32
	// NumFrames is the number of chunks; FrameSize*NumFrames must be a
	// multiple of the page size.
	NumFrames uint32
}

func (c UMEMConfig) withDefaults() UMEMConfig {
	if c.FrameSize == 0 {
		c.FrameSize = DefaultFrameSize
	}
	return c
}

// Size returns the UMEM size in bytes.
func (c UMEMConfig) Size() int {
	c = c.withDefaults()
	return int(c.FrameSize) * int(c.NumFrames)
}

// Validate checks the configuration before any kernel call.
func (c UMEMConfig) Validate() error {
	c = c.withDefaults()
	page := uint32(os.Getpagesize())
	if c.FrameSize < 2048 || c.FrameSize > page || c.FrameSize&(c.FrameSize-1) != 0 {
		return fmt.Errorf("umem frame size %d: must be a power of two between 2048 and the page size %d", c.FrameSize, page)
	}
	if c.NumFrames == 0 {
		return errors.New("umem: NumFrames is 0; give the number of packet buffers")
	}
	if uint64(c.FrameSize)*uint64(c.NumFrames) > 1<<40 {
		return fmt.Errorf("umem: %d frames of %d bytes is too large", c.NumFrames, c.FrameSize)
	}
	if (uint64(c.FrameSize)*uint64(c.NumFrames))%uint64(page) != 0 {
		return fmt.Errorf("umem: %d frames of %d bytes is not a multiple of the page size %d; use an even number of frames", c.NumFrames, c.FrameSize, page)
	}
	if c.Headroom > c.FrameSize-unix.XDP_PACKET_HEADROOM-128 {
		return fmt.Errorf("umem headroom %d leaves no room for a frame in a %d-byte chunk", c.Headroom, c.FrameSize)
	}
	return nil
}

// NewMemfd creates a memfd of size bytes (MFD_CLOEXEC|MFD_ALLOW_SEALING),
// sizes it, and seals it with [Seals] so that whoever receives the fd cannot
// resize it. The caller owns the returned file.
func NewMemfd(name string, size int) (*os.File, error) {
	if size <= 0 || size%os.Getpagesize() != 0 {
		return nil, fmt.Errorf("memfd %q: size %d must be a positive multiple of the page size", name, size)
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create %q: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %q: ftruncate %d: %w", name, size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, Seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd %q: add seals: %w", name, err)
	}
	return f, nil
}

// Geometry is everything the user side needs, besides the two fds, to map
// and drive a socket. The agent sends it along with the fds.
type Geometry struct {
	FrameSize uint32
	Headroom  uint32
	NumFrames uint32
	RxSize    uint32 // 0 = no RX ring
	TxSize    uint32 // 0 = no TX ring
	FillSize  uint32
	CompSize  uint32
	QueueID   uint32
	BindFlags uint16
}

// Validate checks sizes (powers of two, at least one data ring).
func (g Geometry) Validate() error {
	u := UMEMConfig{FrameSize: g.FrameSize, Headroom: g.Headroom, NumFrames: g.NumFrames}
	if g.FrameSize == 0 {
		return errors.New("geometry: FrameSize is 0")
	}
	if err := u.Validate(); err != nil {
		return fmt.Errorf("geometry: %w", err)
	}
	for _, r := range []struct {
		name string
		n    uint32
		opt  bool
	}{{"rx", g.RxSize, true}, {"tx", g.TxSize, true}, {"fill", g.FillSize, false}, {"completion", g.CompSize, false}} {
		if r.n == 0 && r.opt {
			continue
		}
		if r.n == 0 || r.n&(r.n-1) != 0 || r.n > 1<<20 {
			return fmt.Errorf("geometry: %s ring size %d must be a power of two in [1, 2^20]", r.name, r.n)
		}
	}
	if g.RxSize == 0 && g.TxSize == 0 {
		return errors.New("geometry: neither an RX nor a TX ring")
	}
	return nil
}

// Config says how to create and bind a socket.
type Config struct {
	// Ifindex and QueueID select the (device, queue) to bind to. The
	// ifindex is resolved in the network namespace of the calling thread.
	Ifindex int
	QueueID uint32
	// UMEM describes the packet memory; Mem is the memfd holding it (at
	// least UMEM.Size() bytes). Ignored when SharedUMEMFD is set, except
	// that UMEM must still describe the shared region (for Geometry).
	UMEM UMEMConfig
	Mem  *os.File
	// Ring sizes (powers of two). 0 = DefaultRingSize for fill/completion;
	// for RX/TX, use NoRing to omit the ring.
	RxSize, TxSize, FillSize, CompSize uint32
	// BindFlags are sxdp_flags; 0 means XDP_COPY|XDP_USE_NEED_WAKEUP.
	// With SharedUMEMFD the socket is bound with XDP_SHARED_UMEM alone
	// (the kernel allows no other flag; the owner's apply) and BindFlags
	// only documents the owner's flags in the Geometry.
	BindFlags uint16
	// SharedUMEMFD, when > 0, is an existing bound socket whose UMEM the new
	// socket shares (XDP_SHARED_UMEM). The new socket gets its own fill and
	// completion rings.
	SharedUMEMFD int
	// TxBudget, when > 0, sets XDP_MAX_TX_SKB_BUDGET (Linux 6.17+): how many
	// descriptors one copy-mode sendto kick transmits (kernel default 32).
	// Older kernels ignore it.
	TxBudget uint32
}

// NoRing as an RX or TX size in Config omits that ring.
const NoRing = ^uint32(0)

// Socket is a created, bound AF_XDP socket, agent side.
type Socket struct {
	// FD is the socket, close-on-exec. Pass it to the user side and Close.
	FD       *os.File
	Geometry Geometry
}

// Close closes the agent's copy of the socket fd.
func (s *Socket) Close() error { return s.FD.Close() }

func ringSize(v, def uint32) uint32 {
	switch v {
	case 0:
		return def
	case NoRing:
		return 0
	}
	return v
}

// Create makes an AF_XDP socket (SOCK_CLOEXEC), registers cfg.Mem as its
// UMEM (or shares cfg.SharedUMEMFD's), sets the ring sizes and binds it to
// (cfg.Ifindex, cfg.QueueID). The agent's temporary mapping of the memfd is
// removed before Create returns (see the package doc).
func Create(cfg Config) (*Socket, error) {
	cfg.UMEM = cfg.UMEM.withDefaults()
	g := Geometry{
		FrameSize: cfg.UMEM.FrameSize,
		Headroom:  cfg.UMEM.Headroom,
		NumFrames: cfg.UMEM.NumFrames,
		RxSize:    ringSize(cfg.RxSize, DefaultRingSize),
		TxSize:    ringSize(cfg.TxSize, DefaultRingSize),
		FillSize:  ringSize(cfg.FillSize, DefaultRingSize),
		CompSize:  ringSize(cfg.CompSize, DefaultRingSize),
		QueueID:   cfg.QueueID,
		BindFlags: cfg.BindFlags,
	}
	if g.BindFlags == 0 {
		g.BindFlags = unix.XDP_COPY | unix.XDP_USE_NEED_WAKEUP
	}
	if cfg.SharedUMEMFD > 0 {
		g.BindFlags |= unix.XDP_SHARED_UMEM
	}
	if err := g.Validate(); err != nil {
		return nil, fmt.Errorf("xsk create: %w", err)
	}
	if cfg.Ifindex <= 0 {
		return nil, fmt.Errorf("xsk create: bad ifindex %d", cfg.Ifindex)
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("xsk create: socket(AF_XDP): %w", err)
	}
	f := os.NewFile(uintptr(fd), "xsk")
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if cfg.SharedUMEMFD <= 0 {
		if err := registerUMEM(fd, cfg.Mem, cfg.UMEM); err != nil {
			return nil, fmt.Errorf("xsk create: %w", err)
		}
	}
	for _, o := range []struct {
		name string
		opt  int
		n    uint32
	}{{"XDP_UMEM_FILL_RING", unix.XDP_UMEM_FILL_RING, g.FillSize}, {"XDP_UMEM_COMPLETION_RING", unix.XDP_UMEM_COMPLETION_RING, g.CompSize},
		{"XDP_RX_RING", unix.XDP_RX_RING, g.RxSize}, {"XDP_TX_RING", unix.XDP_TX_RING, g.TxSize}} {
		if o.n == 0 {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, o.opt, int(o.n)); err != nil {
			return nil, fmt.Errorf("xsk create: setsockopt %s=%d: %w", o.name, o.n, err)
		}
	}
	if cfg.TxBudget > 0 {
		err := unix.SetsockoptInt(fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, int(cfg.TxBudget))
		if err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
			return nil, fmt.Errorf("xsk create: setsockopt XDP_MAX_TX_SKB_BUDGET=%d: %w", cfg.TxBudget, err)
		}
	}
	sa := unix.SockaddrXDP{Flags: g.BindFlags, Ifindex: uint32(cfg.Ifindex), QueueID: cfg.QueueID}
	if cfg.SharedUMEMFD > 0 {
		// The kernel rejects any other flag on a sharing socket: it
		// inherits copy/zero-copy and need_wakeup from the UMEM's owner.
		sa.Flags = unix.XDP_SHARED_UMEM
		sa.SharedUmemFD = uint32(cfg.SharedUMEMFD)
	}
	if err := unix.Bind(fd, &sa); err != nil {
		return nil, fmt.Errorf("xsk create: bind ifindex %d queue %d flags %#x: %w", cfg.Ifindex, cfg.QueueID, g.BindFlags, err)
	}
	ok = true
	return &Socket{FD: f, Geometry: g}, nil
}

func registerUMEM(fd int, mem *os.File, u UMEMConfig) error {
	if mem == nil {
		return errors.New("register umem: no memfd given (Config.Mem)")
	}
	if err := u.Validate(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(mem.Fd()), &st); err != nil {
		return fmt.Errorf("register umem: fstat memfd: %w", err)
	}
	if st.Size < int64(u.Size()) {
		return fmt.Errorf("register umem: memfd has %d bytes, need %d", st.Size, u.Size())
	}
	b, err := unix.Mmap(int(mem.Fd()), 0, u.Size(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("register umem: mmap memfd: %w", err)
	}
	// The kernel pins the pages at registration; our mapping is not needed
	// afterwards (package doc: who unmaps what).
	defer unix.Munmap(b)
	reg := unix.XDPUmemReg{
		Addr:     uint64(uintptr(unsafe.Pointer(&b[0]))),
		Len:      uint64(u.Size()),
		Size:     u.FrameSize,
		Headroom: u.Headroom,
	}
	if err := setsockoptRaw(fd, unix.SOL_XDP, unix.XDP_UMEM_REG, unsafe.Pointer(&reg), unsafe.Sizeof(reg)); err != nil {
		return fmt.Errorf("register umem (%d frames x %d): setsockopt XDP_UMEM_REG: %w", u.NumFrames, u.FrameSize, err)
	}
	return nil
}

func setsockoptRaw(fd, level, opt int, p unsafe.Pointer, n uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), n, 0)
	if e != 0 {
		return e
	}
	return nil
}

func getsockoptRaw(fd, level, opt int, p unsafe.Pointer, n *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(n)), 0)
	if e != 0 {
		return e
	}
	return nil
}
