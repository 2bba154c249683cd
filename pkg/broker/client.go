package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by a Client after Close.
var ErrClosed = errors.New("broker client closed")

// AllCaps is every capability this package knows; Dial offers it by default.
const AllCaps = CapAFXDP | CapEFVI | CapFilters | CapStats | CapNeedWakeup

// byeTimeout bounds the BYE that Close sends.
const byeTimeout = 2 * time.Second

// Client is the SDK side of a broker connection. It is safe for concurrent
// use; requests are serialized (this is the control path).
//
// If a request's context ends while the client waits for the reply, the
// request may still complete on the agent, so the connection can no longer be
// trusted: that call and every later one fail, and the caller should Close and
// Dial again (closing frees everything the connection held).
type Client struct {
	mu     sync.Mutex
	c      *net.UnixConn
	fc     *frameConn
	next   uint32
	hello  HelloReply
	broken error
	closed atomic.Bool
}

type dialOptions struct {
	name string
	caps Caps
}

// DialOption configures Dial.
type DialOption func(*dialOptions)

// WithName sets the client name sent in HELLO (for the agent's logs).
func WithName(name string) DialOption { return func(o *dialOptions) { o.name = name } }

// WithCaps sets the capabilities offered in HELLO (default AllCaps).
func WithCaps(c Caps) DialOption { return func(o *dialOptions) { o.caps = c } }

// Dial connects to the broker socket at path (usually $EFVI_SOCKET) and does
// the HELLO handshake.
func Dial(ctx context.Context, path string, opts ...DialOption) (*Client, error) {
	o := dialOptions{name: defaultName(), caps: AllCaps}
	for _, f := range opts {
		f(&o)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path) // SOCK_SEQPACKET|SOCK_CLOEXEC
	if err != nil {
		return nil, fmt.Errorf("broker dial %s: %w", path, err)
	}
	uc := nc.(*net.UnixConn)
	fc, err := newFrameConn(uc)
	if err != nil {
		_ = uc.Close()
		return nil, fmt.Errorf("broker dial %s: %w", path, err)
	}
	c := &Client{c: uc, fc: fc}
	rep, _, err := c.do(ctx, &HelloRequest{Version: uint16(Version), Caps: o.caps, Name: o.name})
	if err != nil {
		_ = uc.Close()
		return nil, fmt.Errorf("broker hello %s: %w", path, err)
	}
	h := rep.(*HelloReply)
	if h.Version > uint16(Version) {
		_ = uc.Close()
		return nil, fmt.Errorf("broker hello %s: agent chose protocol v%d, this client speaks v%d", path, h.Version, Version)
	}
	c.hello = *h
	return c, nil
}

func defaultName() string {
	n := sanitize(fmt.Sprintf("%s[%d]", baseName(os.Args[0]), os.Getpid()), MaxClientName)
	return n
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// Hello returns what the agent said at HELLO: port, MAC, MTU, devices, the
// pod's addresses and the negotiated capabilities.
func (c *Client) Hello() HelloReply {
	h := c.hello
	h.Devices = slices.Clone(h.Devices)
	h.Addrs = slices.Clone(h.Addrs)
	return h
}

// Caps returns the negotiated capabilities.
func (c *Client) Caps() Caps { return c.hello.Caps }

// MemRegion is registered packet memory. File is the memory (mmap it at
// offset 0 for Size bytes); the caller owns it and closes it after use.
type MemRegion struct {
	ID        MemRegID
	ChunkSize uint32
	Size      uint64
	File      *os.File
}

// VI is an allocated VI. File is its fd (an AF_XDP socket on the software
// backend); the caller owns it. Use File.SyscallConn().Control to reach the fd
// without changing its blocking mode (File.Fd() makes it blocking).
type VI struct {
	ID    VIID
	Flags uint32
	Geometry
	File *os.File
}

// AllocPD allocates a protection domain (ef_pd_alloc).
func (c *Client) AllocPD(ctx context.Context, flags uint32) (PDID, error) {
	rep, _, err := c.do(ctx, &AllocPDRequest{Flags: flags})
	if err != nil {
		return 0, fmt.Errorf("broker alloc PD: %w", err)
	}
	return rep.(*AllocPDReply).PD, nil
}

// RegisterMemory asks for size bytes of packet memory (a multiple of 2048)
// registered with pd (ef_memreg_alloc).
func (c *Client) RegisterMemory(ctx context.Context, pd PDID, size uint64) (*MemRegion, error) {
	rep, fds, err := c.do(ctx, &RegMemRequest{PD: pd, Size: size})
	if err != nil {
		return nil, fmt.Errorf("broker register memory (pd %d, %d bytes): %w", pd, size, err)
	}
	r := rep.(*RegMemReply)
	// Populate the memory here, in the client, so its pages are charged to
	// the client's memory cgroup (the pod's limit) rather than to the
	// agent's, which pins them at ALLOC_VI; the agent refuses ALLOC_VI on
	// an unpopulated region.
	if err := unix.Fallocate(fds[0], 0, 0, int64(r.Size)); err != nil {
		closeFDs(fds)
		return nil, fmt.Errorf("broker register memory (pd %d, %d bytes): populate the region (charged to this pod's memory limit): %w", pd, size, err)
	}
	return &MemRegion{ID: r.MemReg, ChunkSize: r.ChunkSize, Size: r.Size,
		File: os.NewFile(uintptr(fds[0]), fmt.Sprintf("efvi-memreg-%d", r.MemReg))}, nil
}

// AllocVI allocates a VI (ef_vi_alloc_from_pd).
func (c *Client) AllocVI(ctx context.Context, req AllocVIRequest) (*VI, error) {
	rep, fds, err := c.do(ctx, &req)
	if err != nil {
		return nil, fmt.Errorf("broker alloc VI (pd %d, memreg %d): %w", req.PD, req.MemReg, err)
	}
	r := rep.(*AllocVIReply)
	return &VI{ID: r.VI, Flags: r.Flags, Geometry: r.Geometry,
		File: os.NewFile(uintptr(fds[0]), fmt.Sprintf("efvi-vi-%d", r.VI))}, nil
}

// FilterAdd adds a filter in efsink grammar to vi (ef_vi_filter_add).
func (c *Client) FilterAdd(ctx context.Context, vi VIID, spec string, flags uint32) (FilterCookie, error) {
	rep, _, err := c.do(ctx, &FilterAddRequest{VI: vi, Flags: flags, Spec: spec})
	if err != nil {
		return 0, fmt.Errorf("broker add filter %q to VI %d: %w", spec, vi, err)
	}
	return rep.(*FilterAddReply).Cookie, nil
}

// FilterDel removes a filter (ef_vi_filter_del).
func (c *Client) FilterDel(ctx context.Context, vi VIID, cookie FilterCookie) error {
	if _, _, err := c.do(ctx, &FilterDelRequest{VI: vi, Cookie: cookie}); err != nil {
		return fmt.Errorf("broker delete filter %#x from VI %d: %w", uint64(cookie), vi, err)
	}
	return nil
}

// Stats reads vi's counters, resetting them if reset (ef_vi_stats_query).
func (c *Client) Stats(ctx context.Context, vi VIID, reset bool) ([]Stat, error) {
	req := &StatsRequest{VI: vi}
	if reset {
		req.Flags = StatsReset
	}
	rep, _, err := c.do(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("broker stats of VI %d: %w", vi, err)
	}
	return rep.(*StatsReply).Stats, nil
}

// FreeVI frees a VI and its filters. The caller closes its VI.File too.
func (c *Client) FreeVI(ctx context.Context, vi VIID) error {
	if _, _, err := c.do(ctx, &FreeVIRequest{VI: vi}); err != nil {
		return fmt.Errorf("broker free VI %d: %w", vi, err)
	}
	return nil
}

// FreeMem frees a memory region. The caller unmaps and closes its File too.
func (c *Client) FreeMem(ctx context.Context, mr MemRegID) error {
	if _, _, err := c.do(ctx, &FreeMemRequest{MemReg: mr}); err != nil {
		return fmt.Errorf("broker free memory region %d: %w", mr, err)
	}
	return nil
}

// FreePD frees a protection domain.
func (c *Client) FreePD(ctx context.Context, pd PDID) error {
	if _, _, err := c.do(ctx, &FreePDRequest{PD: pd}); err != nil {
		return fmt.Errorf("broker free PD %d: %w", pd, err)
	}
	return nil
}

// Close says BYE (the agent frees everything this connection held) and
// closes the connection. A request blocked in another goroutine is
// interrupted. Files already returned stay valid until their owner closes them.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if !c.mu.TryLock() {
		_ = c.c.Close() // interrupt the request in flight
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	if c.broken == nil {
		ctx, cancel := context.WithTimeout(context.Background(), byeTimeout)
		_, _, _ = c.doLocked(ctx, &ByeRequest{})
		cancel()
	}
	c.broken = ErrClosed
	if err := c.c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("broker close: %w", err)
	}
	return nil
}

func (c *Client) do(ctx context.Context, req Message) (Message, []int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil, nil, ErrClosed
	}
	return c.doLocked(ctx, req)
}

// doLocked sends req and waits for its reply. On success it returns the
// decoded OK reply and exactly the fds that reply type carries (owned by the
// caller). A server ERROR comes back as *Error.
func (c *Client) doLocked(ctx context.Context, req Message) (Message, []int, error) {
	if c.broken != nil {
		return nil, nil, c.broken
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	p, err := req.MarshalBinary()
	if err != nil {
		return nil, nil, Errorf(syscall.EINVAL, "%v", err)
	}
	c.next++
	if c.next == 0 {
		c.next = 1
	}
	id := c.next
	frame, err := AppendFrame(nil, req.Type(), id, p)
	if err != nil {
		return nil, nil, Errorf(syscall.EINVAL, "%v", err)
	}
	dl, _ := ctx.Deadline()
	_ = c.c.SetDeadline(dl)
	// A deadline in the past interrupts blocked I/O.
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	fail := func(err error) (Message, []int, error) {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (connection abandoned mid-request: close and dial again)", ctx.Err())
		}
		c.broken = err
		return nil, nil, err
	}
	if err := c.fc.write(frame, nil); err != nil {
		if isClosed(err) {
			return fail(fmt.Errorf("broker closed the connection: %w", err))
		}
		return fail(fmt.Errorf("send %v: %w", req.Type(), err))
	}
	raw, fds, fl, err := c.fc.read()
	if err != nil {
		if isClosed(err) {
			return fail(fmt.Errorf("broker closed the connection before answering %v: %w", req.Type(), err))
		}
		return fail(fmt.Errorf("read %v reply: %w", req.Type(), err))
	}
	if fl.truncated || fl.ctruncated {
		closeFDs(fds)
		return fail(Errorf(syscall.EPROTO, "%v reply too large (truncated by the kernel)", req.Type()))
	}
	h, payload, err := DecodeFrame(raw)
	if err != nil {
		closeFDs(fds)
		return fail(fmt.Errorf("%v reply: %w", req.Type(), err))
	}
	if h.ID != id && !(h.ID == 0 && h.Type == TypeError) {
		closeFDs(fds)
		return fail(Errorf(syscall.EPROTO, "reply id %d to request id %d", h.ID, id))
	}
	if h.Type == TypeError {
		closeFDs(fds)
		var er ErrorReply
		if err := er.UnmarshalBinary(payload); err != nil {
			return fail(fmt.Errorf("%v error reply: %w", req.Type(), err))
		}
		if h.ID == 0 {
			c.broken = er.Err()
		}
		return nil, nil, er.Err()
	}
	if h.Type != req.Type().Reply() {
		closeFDs(fds)
		return fail(Errorf(syscall.EPROTO, "reply type %v to %v", h.Type, req.Type()))
	}
	if want := replyFDs(req.Type()); len(fds) != want {
		closeFDs(fds)
		return fail(Errorf(syscall.EPROTO, "%v carried %d file descriptors, want %d", h.Type, len(fds), want))
	}
	rep, err := DecodeReply(h.Type, payload)
	if err != nil {
		closeFDs(fds)
		return fail(err)
	}
	return rep, fds, nil
}
