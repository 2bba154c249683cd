package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Request is an allocate request that passed parsing, for the Allocator.
type Request struct {
	// Cluster is the name the client passed to ef_pd_alloc_by_name, without
	// any "N@" channel prefix.
	Cluster string
	// PDFlags are the client's enum ef_pd_flags (EF_PD_VF, EF_PD_PHYS_MODE...).
	PDFlags int
	// PeerPID is the connecting process, from SO_PEERCRED (0 if unknown).
	PeerPID int32
}

// Grant is what the Allocator hands the client.
type Grant struct {
	// PDResID and VISetResID are the driver resource ids of the PD and VI set.
	PDResID, VISetResID uint32
	// IfName is the port's interface name (at most MaxIfName bytes).
	IfName string
	// FD is the open /dev/sfc_char handle the PD and VI set were allocated
	// on. The server passes it with SCM_RIGHTS and never closes it.
	FD int
	// Done, if set, is called once when the client that received this grant
	// disconnects (ef_pd_free) or the server closes.
	Done func()
}

// Allocator allocates (or returns the already allocated) PD and VI set for
// a request. An error carrying a syscall.Errno (errors.As) is sent to the
// client as that errno; ErrNoCluster sends ENOENT; any other error EIO.
type Allocator interface {
	Allocate(ctx context.Context, req Request) (Grant, error)
}

// AllocatorFunc adapts a function to Allocator.
type AllocatorFunc func(ctx context.Context, req Request) (Grant, error)

// Allocate implements Allocator.
func (f AllocatorFunc) Allocate(ctx context.Context, req Request) (Grant, error) { return f(ctx, req) }

// ErrNoCluster is the Allocator's answer for a cluster name it does not serve.
var ErrNoCluster = fmt.Errorf("no such cluster: %w", syscall.ENOENT)

// Config configures a Server.
type Config struct {
	// Path of the socket file (at most 107 bytes). Its directory must exist;
	// a stale socket at Path is replaced, any other file is an error.
	Path string
	// Mode of the socket file: 0600 (default), 0660 or 0666 (when the
	// directory holding it, mounted into one container, is the access control).
	Mode fs.FileMode
	// Allocator serves allocate requests. Required.
	Allocator Allocator
	// Authorize, if set, checks each peer (SO_PEERCRED) before its first
	// request is read; an error refuses it with EPERM.
	Authorize func(ctx context.Context, pid int32, uid, gid uint32) error
	// MaxConns bounds concurrent connections (default 8); more are refused
	// with EBUSY and closed.
	MaxConns int
	// RequestTimeout bounds the wait for each request of the handshake
	// (default 10s). After a successful allocate there is no timeout: the
	// client keeps the connection for the life of its PD.
	RequestTimeout time.Duration
	// Logger for structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// Server serves the cluster protocol on one unix socket.
type Server struct {
	cfg    Config
	ln     *net.UnixListener
	log    *slog.Logger
	sem    chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[*net.UnixConn]struct{}
	closed bool
}

// Listen creates the socket file and starts listening; Serve serves it.
func Listen(cfg Config) (*Server, error) {
	if cfg.Path == "" {
		return nil, errors.New("cluster listen: empty socket path")
	}
	if len(cfg.Path) > 107 {
		return nil, fmt.Errorf("cluster listen %s: path is %d bytes, a unix socket path holds at most 107", cfg.Path, len(cfg.Path))
	}
	if cfg.Allocator == nil {
		return nil, fmt.Errorf("cluster listen %s: Config.Allocator is nil", cfg.Path)
	}
	switch cfg.Mode {
	case 0:
		cfg.Mode = 0o600
	case 0o600, 0o660, 0o666:
	default:
		return nil, fmt.Errorf("cluster listen %s: mode %#o not allowed, use 0600, 0660 or 0666", cfg.Path, cfg.Mode)
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 8
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if fi, err := os.Lstat(cfg.Path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("cluster listen %s: path exists and is not a socket (%v); remove it or pick another path", cfg.Path, fi.Mode().Type())
		}
		if err := os.Remove(cfg.Path); err != nil {
			return nil, fmt.Errorf("cluster listen %s: remove stale socket: %w", cfg.Path, err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("cluster listen %s: socket: %w", cfg.Path, err)
	}
	fail := func(step string, err error) (*Server, error) {
		_ = unix.Close(fd)
		_ = os.Remove(cfg.Path)
		return nil, fmt.Errorf("cluster listen %s: %s: %w", cfg.Path, step, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: cfg.Path}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("cluster listen %s: bind: %w", cfg.Path, err)
	}
	// Not listening yet, so nobody connects before the mode is right.
	if err := os.Chmod(cfg.Path, cfg.Mode); err != nil {
		return fail("chmod", err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return fail("listen", err)
	}
	f := os.NewFile(uintptr(fd), cfg.Path)
	ln, err := net.FileListener(f) // dups with F_DUPFD_CLOEXEC
	_ = f.Close()
	if err != nil {
		_ = os.Remove(cfg.Path)
		return nil, fmt.Errorf("cluster listen %s: %w", cfg.Path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:    cfg,
		ln:     ln.(*net.UnixListener),
		log:    cfg.Logger.With("cluster_socket", cfg.Path),
		sem:    make(chan struct{}, cfg.MaxConns),
		ctx:    ctx,
		cancel: cancel,
		conns:  map[*net.UnixConn]struct{}{},
	}, nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.cfg.Path }

// Serve accepts connections until ctx is done or Close is called, then
// closes every connection, waits for their goroutines and removes the socket
// file. It returns nil after a normal stop.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = s.Close() })
	defer stop()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				_ = s.Close()
				s.wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			_ = s.Close()
			s.wg.Wait()
			return fmt.Errorf("cluster serve %s: accept: %w", s.cfg.Path, err)
		}
		if !s.track(c) {
			_ = c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			select {
			case s.sem <- struct{}{}:
				defer func() { <-s.sem }()
				s.serveConn(c)
			default:
				s.refuse(c, syscall.EBUSY, fmt.Sprintf("%d connections already open (MaxConns)", s.cfg.MaxConns))
			}
		}()
	}
}

// Close stops the server: the listener, every connection (calling each
// grant's Done) and the socket file. Serve returns after it.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := make([]*net.UnixConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()
	err := s.ln.Close()
	for _, c := range conns {
		_ = c.Close()
	}
	_ = os.Remove(s.cfg.Path)
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *Server) track(c *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *net.UnixConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	_ = c.Close()
}

// refuse answers a connection's first request with errno and closes it.
func (s *Server) refuse(c *net.UnixConn, errno syscall.Errno, why string) {
	s.log.Warn("cluster connection refused", "errno", errno.Error(), "reason", why)
	_ = c.SetDeadline(time.Now().Add(s.cfg.RequestTimeout))
	// Wait for the request (or EOF) so the reply answers it, then reply.
	var buf [MaxRequest]byte
	_, _ = c.Read(buf[:])
	_ = s.send(c, allocFail(errno), -1)
}

// serveConn runs one client's handshake, then waits for its EOF.
func (s *Server) serveConn(c *net.UnixConn) {
	log := s.log
	var peerPID int32
	if cred, err := peerCred(c); err == nil {
		peerPID = cred.Pid
		log = log.With("peer_pid", cred.Pid, "peer_uid", cred.Uid)
		if s.cfg.Authorize != nil {
			if err := s.cfg.Authorize(s.ctx, cred.Pid, cred.Uid, cred.Gid); err != nil {
				s.refuse(c, syscall.EPERM, "peer not authorized: "+err.Error())
				return
			}
		}
	} else if s.cfg.Authorize != nil {
		s.refuse(c, syscall.EPERM, "peer credentials unavailable: "+err.Error())
		return
	}
	sess := session{}
	rd := lineReader{c: c}
	for {
		if sess.granted {
			_ = c.SetReadDeadline(time.Time{})
		} else {
			_ = c.SetReadDeadline(time.Now().Add(s.cfg.RequestTimeout))
		}
		line, rerr := rd.next()
		if rerr != nil {
			switch {
			case errors.Is(rerr, io.EOF) && sess.granted:
				log.Info("cluster client done (EOF)", "cluster", sess.cluster)
			case errors.Is(rerr, io.EOF) && rd.partial():
				log.Warn("cluster client disconnected mid-request", "bytes", rd.n)
			case errors.Is(rerr, io.EOF):
				log.Debug("cluster client disconnected", "step", sess.step())
			case errors.Is(rerr, errTooLong):
				log.Warn("cluster request refused", "errno", syscall.EMSGSIZE.Error(), "reason", rerr.Error())
				_ = s.send(c, allocFail(syscall.EMSGSIZE), -1)
			case s.ctx.Err() != nil:
			default:
				var ne net.Error
				if errors.As(rerr, &ne) && ne.Timeout() {
					log.Warn("cluster request refused", "errno", syscall.ETIMEDOUT.Error(), "reason",
						fmt.Sprintf("no complete request within %v", s.cfg.RequestTimeout))
					_ = s.send(c, allocFail(syscall.ETIMEDOUT), -1)
				} else {
					log.Warn("cluster read failed", "err", rerr)
				}
			}
			sess.finish()
			return
		}
		reply, fd, keep := sess.handle(s.ctx, line, s.cfg.Allocator, peerPID, log)
		if reply != nil {
			if err := s.send(c, reply, fd); err != nil {
				log.Warn("cluster reply failed", "err", err)
				sess.finish()
				return
			}
		}
		if !keep {
			sess.finish()
			return
		}
	}
}

// send writes one reply with one sendmsg, with fd attached if fd >= 0.
func (s *Server) send(c *net.UnixConn, reply []byte, fd int) error {
	_ = c.SetWriteDeadline(time.Now().Add(s.cfg.RequestTimeout))
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	n, oobn, err := c.WriteMsgUnix(reply, oob, nil)
	if err != nil {
		return fmt.Errorf("sendmsg: %w", err)
	}
	if n != len(reply) || oobn != len(oob) {
		return fmt.Errorf("sendmsg: short write %d/%d bytes, %d/%d control", n, len(reply), oobn, len(oob))
	}
	return nil
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return nil, err
	}
	return cred, cerr
}

var errTooLong = fmt.Errorf("request longer than %d bytes without a newline", MaxRequest)

// lineReader reads newline-terminated requests of at most MaxRequest bytes.
type lineReader struct {
	c   io.Reader
	buf [MaxRequest]byte
	n   int
}

func (r *lineReader) partial() bool { return r.n > 0 }

// next returns the next line without its newline. The slice is valid until
// the next call.
func (r *lineReader) next() ([]byte, error) {
	for {
		if i := bytes.IndexByte(r.buf[:r.n], '\n'); i >= 0 {
			line := make([]byte, i)
			copy(line, r.buf[:i])
			r.n = copy(r.buf[:], r.buf[i+1:r.n])
			return line, nil
		}
		if r.n == len(r.buf) {
			return nil, errTooLong
		}
		m, err := r.c.Read(r.buf[r.n:])
		r.n += m
		if m > 0 {
			continue
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		return nil, err
	}
}

// session is one connection's protocol state machine, free of I/O.
type session struct {
	versioned bool
	granted   bool
	cluster   string
	done      func()
}

func (s *session) step() string {
	switch {
	case s.granted:
		return "granted"
	case s.versioned:
		return "allocate"
	default:
		return "version"
	}
}

// finish runs the grant's Done once.
func (s *session) finish() {
	if s.done != nil {
		d := s.done
		s.done = nil
		d()
	}
}

// handle answers one request line: the reply (nil for none), the fd to
// attach (-1 for none), and whether the connection stays open.
func (s *session) handle(ctx context.Context, line []byte, alloc Allocator, peerPID int32, log *slog.Logger) ([]byte, int, bool) {
	refuse := func(b *badRequest) ([]byte, int, bool) {
		log.Warn("cluster request refused", "step", s.step(), "errno", b.errno.Error(), "reason", b.reason)
		return allocFail(b.errno), -1, false
	}
	if s.granted {
		return refuse(bad(syscall.EPROTO, "request %q after a successful allocate: libciul sends nothing more", clip(line)))
	}
	req, b := parseRequest(line)
	if b != nil {
		return refuse(b)
	}
	switch req.kind {
	case reqVersion:
		if s.versioned {
			return refuse(bad(syscall.EPROTO, "second version request"))
		}
		if req.version != ProtocolVersion {
			log.Warn("cluster request refused", "step", "version", "reason",
				fmt.Sprintf("client speaks protocol version %d, this server %d: use a libciul of the node's Onload release", req.version, ProtocolVersion))
			return versionReply(false), -1, false
		}
		s.versioned = true
		return versionReply(true), -1, true
	case reqAlloc:
		if !s.versioned {
			return refuse(bad(syscall.EPROTO, "allocate before the version request"))
		}
		g, err := alloc.Allocate(ctx, Request{Cluster: req.name, PDFlags: req.flags, PeerPID: peerPID})
		if err != nil {
			errno := syscall.EIO
			var e syscall.Errno
			if errors.As(err, &e) && e != 0 {
				errno = e
			}
			log.Warn("cluster allocate refused", "cluster", req.name, "pd_flags", req.flags, "errno", errno.Error(), "err", err)
			return allocFail(errno), -1, false
		}
		reply := allocOK(g.PDResID, g.VISetResID, g.IfName)
		switch {
		case checkIfName(g.IfName) != nil, g.FD < 0, len(reply) >= allocReplyBuf:
			if g.Done != nil {
				g.Done()
			}
			log.Error("cluster allocator returned an unusable grant", "cluster", req.name, "ifname", g.IfName, "fd", g.FD)
			return allocFail(syscall.EIO), -1, false
		}
		s.granted, s.cluster, s.done = true, req.name, g.Done
		log.Info("cluster allocated", "cluster", req.name, "pd_flags", req.flags, "pd_res", g.PDResID, "viset_res", g.VISetResID, "ifname", g.IfName)
		return reply, g.FD, true
	}
	return refuse(bad(syscall.EBADMSG, "unhandled request"))
}
