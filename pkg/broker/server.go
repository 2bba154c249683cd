package broker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a connection, from SO_PEERCRED
// (as seen in the agent's pid and user namespaces, at connect time).
type Peer struct {
	PID int32
	UID uint32
	GID uint32
}

func (p Peer) String() string { return fmt.Sprintf("pid %d uid %d gid %d", p.PID, p.UID, p.GID) }

// Authorizer decides whether a peer may use this socket. A non-nil error
// rejects the connection: its first request is answered with EPERM (carrying
// the error's text) and the connection is closed.
type Authorizer interface {
	Authorize(ctx context.Context, p Peer) error
}

// AuthorizerFunc adapts a function to Authorizer.
type AuthorizerFunc func(ctx context.Context, p Peer) error

// Authorize implements Authorizer.
func (f AuthorizerFunc) Authorize(ctx context.Context, p Peer) error { return f(ctx, p) }

// AllowAny accepts every peer: the socket itself (mounted into one container)
// is the capability.
func AllowAny() Authorizer {
	return AuthorizerFunc(func(context.Context, Peer) error { return nil })
}

// AllowUIDs accepts only peers running as one of uids.
func AllowUIDs(uids ...uint32) Authorizer {
	allowed := slices.Clone(uids)
	return AuthorizerFunc(func(_ context.Context, p Peer) error {
		if slices.Contains(allowed, p.UID) {
			return nil
		}
		return fmt.Errorf("uid %d is not allowed on this socket (allowed: %v)", p.UID, allowed)
	})
}

// FD is a file descriptor a Session hands to the server to send with a reply.
// The zero FD means "none". Build one with TransferFD or LendFD, which say who
// owns the descriptor after the reply.
type FD struct {
	fd   int
	keep bool
	set  bool
}

// TransferFD gives fd to the server: it sends it and then closes it, exactly
// once, whether the send succeeded or not (also when the reply could not be
// sent at all). The session must not use fd afterwards.
func TransferFD(fd int) FD { return FD{fd: fd, set: true} }

// LendFD lets the server send fd while the session keeps owning it: the server
// never closes it, and the session closes it when it frees the resource.
func LendFD(fd int) FD { return FD{fd: fd, keep: true, set: true} }

// Session serves one connection: one client, one set of PDs, memory regions,
// VIs and filters. Methods are called from one goroutine, in request order.
// Returned errors become ERROR replies: an *Error or a wrapped syscall.Errno
// sets the errno (ef_vi's EPERM, EEXIST, EBUSY, EINVAL, ...), anything else is
// EIO. A method that returns an error must not return an FD; if it does, a
// transferred FD is closed anyway.
//
// Close is called exactly once when the connection ends for any reason (BYE,
// EOF, a killed client, a protocol error, server shutdown) and must free
// everything the client still holds.
type Session interface {
	// Hello fills in what the client needs (pool, port, MAC, MTU, devices,
	// addresses) and the server's capabilities; the server sets Version and
	// narrows Caps to those the client also sent.
	Hello(ctx context.Context, req *HelloRequest) (*HelloReply, error)
	AllocPD(ctx context.Context, req *AllocPDRequest) (*AllocPDReply, error)
	// RegisterMemory returns the region and the memory fd to pass.
	RegisterMemory(ctx context.Context, req *RegMemRequest) (*RegMemReply, FD, error)
	// AllocVI returns the VI and its fd (an XSK on the software backend).
	AllocVI(ctx context.Context, req *AllocVIRequest) (*AllocVIReply, FD, error)
	FilterAdd(ctx context.Context, req *FilterAddRequest) (*FilterAddReply, error)
	FilterDel(ctx context.Context, req *FilterDelRequest) error
	Stats(ctx context.Context, req *StatsRequest) (*StatsReply, error)
	FreeVI(ctx context.Context, req *FreeVIRequest) error
	FreeMem(ctx context.Context, req *FreeMemRequest) error
	FreePD(ctx context.Context, req *FreePDRequest) error
	Close() error
}

// SessionFactory makes a Session for an authorized peer at its HELLO. An
// error is answered to the HELLO and closes the connection.
type SessionFactory interface {
	NewSession(ctx context.Context, p Peer) (Session, error)
}

// SessionFactoryFunc adapts a function to SessionFactory.
type SessionFactoryFunc func(ctx context.Context, p Peer) (Session, error)

// NewSession implements SessionFactory.
func (f SessionFactoryFunc) NewSession(ctx context.Context, p Peer) (Session, error) {
	return f(ctx, p)
}

// Config configures a Server.
type Config struct {
	// Path of the socket file (at most 107 bytes). Its directory must exist;
	// a stale socket at Path is replaced, any other file is an error.
	Path string
	// Mode of the socket file: 0600 (default), 0660, or 0666 when the
	// directory holding it is the access control (a per-allocation directory
	// mounted into one container, whose uid the agent does not know); the
	// Authorizer still checks every peer.
	Mode fs.FileMode
	// Chown, if set, is called with Path after the socket file is created and
	// before it accepts connections (e.g. os.Chown(path, uid, gid)).
	Chown func(path string) error
	// Authorizer checks each peer; nil means AllowAny.
	Authorizer Authorizer
	// Sessions makes a Session per connection. Required.
	Sessions SessionFactory
	// MaxConns bounds concurrent sessions (default 4). A session's slot is
	// taken at HELLO, so connections that never say HELLO hold none; a HELLO
	// over the limit gets EBUSY and its connection is closed.
	MaxConns int
	// MaxPending bounds connections that have not said HELLO yet (default
	// 2*MaxConns); more are closed at accept. HelloTimeout bounds how long
	// each may stay pending.
	MaxPending int
	// MaxConnsSetting names where MaxConns is configured (e.g.
	// "pools[0].limits.connections"), for the EBUSY message; optional.
	MaxConnsSetting string
	// MaxMalformed closes a connection after this many malformed frames
	// (default 3). An undecodable header closes it at once.
	MaxMalformed int
	// HelloTimeout closes a connection that sends no HELLO in time (default 10s).
	HelloTimeout time.Duration
	// IdleTimeout closes a connection that sends no request for this long
	// after HELLO (default DefaultIdleTimeout), unless its session holds
	// resources (it implements [Holder] and says so): a pod keeps its
	// connection open, silent, for as long as it uses its VI.
	IdleTimeout time.Duration
	// WriteTimeout bounds sending each reply (default DefaultWriteTimeout):
	// a client that does not read its replies is disconnected, and its
	// session closed, instead of holding a server goroutine in sendmsg.
	WriteTimeout time.Duration
	// Logger for structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// Timeout defaults (see Config).
const (
	DefaultHelloTimeout = 10 * time.Second
	DefaultIdleTimeout  = 5 * time.Minute
	DefaultWriteTimeout = 10 * time.Second
)

// Holder is optionally implemented by a Session: Holding reports whether the
// client holds resources (a VI) that end with its connection. An idle
// connection whose session is holding is kept (IdleTimeout re-arms).
type Holder interface {
	Holding() bool
}

// Server serves the broker protocol on one unix socket.
type Server struct {
	cfg  Config
	ln   *net.UnixListener
	ino  uint64
	log  *slog.Logger
	sem  chan struct{} // active sessions (taken at HELLO)
	pend chan struct{} // connections not yet past HELLO
	mu   sync.Mutex
	stop context.CancelFunc
	done bool
}

// Listen creates the socket file (SOCK_SEQPACKET, close-on-exec) with the
// configured mode and owner, and starts listening. Serve then serves it.
func Listen(cfg Config) (*Server, error) {
	if cfg.Path == "" {
		return nil, errors.New("broker listen: empty socket path")
	}
	if len(cfg.Path) > 107 {
		return nil, fmt.Errorf("broker listen %s: path is %d bytes, a unix socket path holds at most 107", cfg.Path, len(cfg.Path))
	}
	if cfg.Sessions == nil {
		return nil, fmt.Errorf("broker listen %s: Config.Sessions is nil", cfg.Path)
	}
	switch cfg.Mode {
	case 0:
		cfg.Mode = 0o600
	case 0o600, 0o660, 0o666:
	default:
		return nil, fmt.Errorf("broker listen %s: mode %#o not allowed, use 0600, 0660 or 0666", cfg.Path, cfg.Mode)
	}
	if cfg.Authorizer == nil {
		cfg.Authorizer = AllowAny()
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 4
	}
	if cfg.MaxMalformed <= 0 {
		cfg.MaxMalformed = 3
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 2 * cfg.MaxConns
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = DefaultHelloTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if fi, err := os.Lstat(cfg.Path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("broker listen %s: path exists and is not a socket (%v); remove it or pick another path", cfg.Path, fi.Mode().Type())
		}
		if err := os.Remove(cfg.Path); err != nil {
			return nil, fmt.Errorf("broker listen %s: remove stale socket: %w", cfg.Path, err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("broker listen %s: socket: %w", cfg.Path, err)
	}
	fail := func(step string, err error) (*Server, error) {
		_ = unix.Close(fd)
		_ = os.Remove(cfg.Path)
		return nil, fmt.Errorf("broker listen %s: %s: %w", cfg.Path, step, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: cfg.Path}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("broker listen %s: bind: %w", cfg.Path, err)
	}
	// Not listening yet, so nobody can connect before mode and owner are right.
	if err := os.Chmod(cfg.Path, cfg.Mode); err != nil {
		return fail("chmod", err)
	}
	if cfg.Chown != nil {
		if err := cfg.Chown(cfg.Path); err != nil {
			return fail("chown hook", err)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(cfg.Path, &st); err != nil {
		return fail("stat", err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		return fail("listen", err)
	}
	f := os.NewFile(uintptr(fd), cfg.Path)
	ln, err := net.FileListener(f) // dups with F_DUPFD_CLOEXEC
	_ = f.Close()
	if err != nil {
		_ = os.Remove(cfg.Path)
		return nil, fmt.Errorf("broker listen %s: %w", cfg.Path, err)
	}
	return &Server{
		cfg:  cfg,
		ln:   ln.(*net.UnixListener),
		ino:  st.Ino,
		log:  cfg.Logger.With("socket", cfg.Path),
		sem:  make(chan struct{}, cfg.MaxConns),
		pend: make(chan struct{}, cfg.MaxPending),
	}, nil
}

// Path returns the socket path.
func (s *Server) Path() string { return s.cfg.Path }

// Serve accepts connections until ctx is done or Close is called. Before it
// returns, every connection is closed and every Session's Close has returned,
// and the socket file is removed. It returns nil after a normal stop.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	if s.done || s.stop != nil {
		s.mu.Unlock()
		return fmt.Errorf("broker serve %s: server already served or closed", s.cfg.Path)
	}
	s.stop = cancel
	s.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer s.shutdown()
	stopAccept := context.AfterFunc(ctx, func() { _ = s.ln.Close() })
	defer stopAccept()
	s.log.Info("broker serving", "max_conns", s.cfg.MaxConns)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM) {
				s.log.Warn("broker accept", "err", err)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			return fmt.Errorf("broker serve %s: accept: %w", s.cfg.Path, err)
		}
		select {
		case s.pend <- struct{}{}:
		default:
			s.log.Warn("broker connection dropped: too many connections waiting for HELLO", "max_pending", s.cfg.MaxPending)
			_ = c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

// Close stops the server: Serve returns once every connection is finished.
// Calling Close without Serve releases the socket.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		s.stop()
		return nil
	}
	if !s.done {
		s.done = true
		s.removeSocket()
		return s.ln.Close()
	}
	return nil
}

func (s *Server) shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.ln.Close()
	if !s.done {
		s.done = true
		s.removeSocket()
	}
	s.log.Info("broker stopped")
}

// removeSocket unlinks the socket file if it is still ours.
func (s *Server) removeSocket() {
	var st unix.Stat_t
	if err := unix.Lstat(s.cfg.Path, &st); err == nil && st.Ino == s.ino {
		_ = os.Remove(s.cfg.Path)
	}
}

func peerCred(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if cerr != nil {
		return Peer{}, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return Peer{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// serveConn runs one connection. It holds a pending slot until HELLO and a
// session slot from HELLO until the session is closed (before the BYE reply,
// so a client that said BYE can reconnect at once).
func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	slots := &connSlots{srv: s, pending: true}
	defer slots.release()
	defer c.Close()
	peer, err := peerCred(c)
	if err != nil {
		s.log.Warn("broker connection dropped", "err", err)
		return
	}
	log := s.log.With("pid", peer.PID, "uid", peer.UID, "gid", peer.GID)
	var reject *Error
	if err := s.cfg.Authorizer.Authorize(ctx, peer); err != nil {
		reject = Errorf(syscall.EPERM, "peer %v not authorized: %v", peer, err)
		log.Warn("broker peer rejected", "err", err)
	}
	fc, err := newFrameConn(c)
	if err != nil {
		log.Warn("broker connection dropped", "err", err)
		return
	}
	cs := &connState{srv: s, peer: peer, log: log, reject: reject, slots: slots}
	defer cs.close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	_ = c.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	log.Debug("broker connection")
	for {
		frame, fds, fl, err := fc.read()
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded) && cs.sess == nil:
				log.Warn("broker connection closed: no HELLO in time", "timeout", s.cfg.HelloTimeout)
			case errors.Is(err, os.ErrDeadlineExceeded) && cs.holding():
				// Idle, but the client holds a VI: keep it.
				_ = c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
				continue
			case errors.Is(err, os.ErrDeadlineExceeded):
				log.Warn("broker connection closed: idle and holding nothing", "timeout", s.cfg.IdleTimeout)
			case isClosed(err) || ctx.Err() != nil:
				log.Debug("broker connection closed", "err", err)
			default:
				log.Warn("broker connection read", "err", err)
			}
			return
		}
		// Requests never carry fds: close any a client sent.
		closeFDs(fds)
		out, pass, closeAfter := cs.handle(ctx, frame, fl, len(fds))
		if cs.sess != nil {
			_ = c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		}
		var werr error
		if out != nil {
			_ = c.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
			werr = fc.write(out, rawFDs(pass))
		}
		releaseFDs(pass)
		if werr != nil {
			if errors.Is(werr, os.ErrDeadlineExceeded) {
				log.Warn("broker connection closed: the client does not read its replies", "timeout", s.cfg.WriteTimeout)
			} else {
				log.Warn("broker reply not sent", "err", werr)
			}
			return
		}
		if closeAfter {
			return
		}
	}
}

func rawFDs(p []FD) []int {
	var fds []int
	for _, f := range p {
		if f.set {
			fds = append(fds, f.fd)
		}
	}
	return fds
}

// releaseFDs closes the transferred fds (exactly once; lent ones stay open).
func releaseFDs(p []FD) {
	for _, f := range p {
		if f.set && !f.keep {
			_ = unix.Close(f.fd)
		}
	}
}

// connState is one connection's protocol state, independent of the socket
// (so the dispatcher can be fuzzed without one).
type connState struct {
	srv       *Server
	peer      Peer
	log       *slog.Logger
	reject    *Error
	sess      Session
	malformed int
	closed    bool
	slots     *connSlots // may be nil (fuzzing)
}

// connSlots is what one connection holds of the server's limits: a pending
// slot until HELLO, then a session slot until its session is closed.
type connSlots struct {
	srv     *Server
	pending bool
	session bool
}

// takeSession moves the connection from pending to a session slot; false if
// every session slot is taken.
func (cs *connSlots) takeSession() bool {
	select {
	case cs.srv.sem <- struct{}{}:
	default:
		return false
	}
	cs.session = true
	cs.releasePending()
	return true
}

func (cs *connSlots) releasePending() {
	if cs.pending {
		cs.pending = false
		<-cs.srv.pend
	}
}

// release frees whatever the connection still holds (idempotent).
func (cs *connSlots) release() {
	cs.releasePending()
	if cs.session {
		cs.session = false
		<-cs.srv.sem
	}
}

// holding reports whether the session holds resources (see Holder).
func (cs *connState) holding() bool {
	h, ok := cs.sess.(Holder)
	return ok && h.Holding()
}

// close closes the session (once) and then frees the connection slot.
func (cs *connState) close() {
	if cs.closed {
		return
	}
	cs.closed = true
	if cs.sess != nil {
		if err := cs.sess.Close(); err != nil {
			cs.log.Warn("broker session close", "err", err)
		} else {
			cs.log.Info("broker session closed")
		}
	}
	if cs.slots != nil {
		cs.slots.release()
	}
}

// handle answers one received frame. It returns the reply frame (nil: send
// nothing), the fds to pass with it (released by the caller after sending) and
// whether to close the connection after the reply.
func (cs *connState) handle(ctx context.Context, frame []byte, fl recvFlags, nfds int) ([]byte, []FD, bool) {
	h, p, err := DecodeFrame(frame)
	var eh *errHeader
	if errors.As(err, &eh) {
		cs.log.Warn("broker connection closed: undecodable frame", "err", err)
		return nil, nil, true
	}
	if cs.reject != nil {
		cs.log.Info("broker request rejected", "type", h.Type, "errno", uint32(cs.reject.Errno))
		return cs.errorFrame(h, cs.reject), nil, true
	}
	switch {
	case h.ID == 0:
		err = Errorf(syscall.EINVAL, "frame %v has request id 0; ids are chosen by the client and never 0", h.Type)
	case fl.truncated:
		err = Errorf(syscall.EMSGSIZE, "frame %v id %d longer than the %d-byte limit", h.Type, h.ID, MaxMessageSize)
	case nfds > 0 || fl.ctruncated:
		err = Errorf(syscall.EINVAL, "frame %v id %d carries file descriptors; requests never do", h.Type, h.ID)
	}
	if err != nil {
		return cs.malformedReply(h, err)
	}
	if !h.Type.IsRequest() {
		e := Errorf(syscall.EOPNOTSUPP, "unknown request type 0x%02x (broker protocol v%d)", uint8(h.Type), Version)
		return cs.errorFrame(h, e), nil, false
	}
	req, err := DecodeRequest(h.Type, p)
	if err != nil {
		return cs.malformedReply(h, err)
	}
	if cs.sess == nil {
		hello, ok := req.(*HelloRequest)
		if !ok {
			return cs.malformedReply(h, Errorf(syscall.EPROTO, "%v before HELLO: a session starts with HELLO", h.Type))
		}
		return cs.hello(ctx, h, hello)
	}
	if h.Type == TypeHello {
		return cs.malformedReply(h, Errorf(syscall.EPROTO, "second HELLO on one connection"))
	}
	rep, fd, err := cs.dispatch(ctx, req)
	var pass []FD
	if fd.set {
		pass = []FD{fd}
	}
	// Error paths send no fds; transferred ones are closed here.
	if err != nil {
		releaseFDs(pass)
		cs.log.Info("broker request failed", "type", h.Type, "id", h.ID, "err", err)
		return cs.errorFrame(h, err), nil, false
	}
	out, err := encodeReply(h.ID, rep)
	if err != nil {
		releaseFDs(pass)
		cs.log.Error("broker session returned an invalid reply", "type", h.Type, "err", err)
		return cs.errorFrame(h, Errorf(syscall.EIO, "agent produced an invalid %v reply: %v", h.Type, err)), nil, false
	}
	if want := replyFDs(h.Type); len(pass) != want {
		releaseFDs(pass)
		cs.log.Error("broker session returned the wrong number of fds", "type", h.Type, "got", len(pass), "want", want)
		return cs.errorFrame(h, Errorf(syscall.EIO, "agent produced %v reply with %d fds, want %d", h.Type, len(pass), want)), nil, false
	}
	cs.log.Debug("broker request", "type", h.Type, "id", h.ID)
	return out, pass, h.Type == TypeBye
}

func (cs *connState) hello(ctx context.Context, h Header, req *HelloRequest) ([]byte, []FD, bool) {
	if cs.slots != nil && !cs.slots.takeSession() {
		cs.log.Warn("broker session refused: every session slot is taken", "max_conns", cs.srv.cfg.MaxConns)
		where := ""
		if cs.srv.cfg.MaxConnsSetting != "" {
			where = ", set by " + cs.srv.cfg.MaxConnsSetting
		}
		return cs.errorFrame(h, Errorf(syscall.EBUSY, "too many sessions on this broker socket (limit %d%s); close one first", cs.srv.cfg.MaxConns, where)), nil, true
	}
	sess, err := cs.srv.cfg.Sessions.NewSession(ctx, cs.peer)
	if err != nil {
		cs.log.Warn("broker session refused", "err", err)
		return cs.errorFrame(h, err), nil, true
	}
	if sess == nil {
		return cs.errorFrame(h, Errorf(syscall.EIO, "agent has no session for this peer")), nil, true
	}
	cs.sess = sess // from here on, Close will be called
	rep, err := sess.Hello(ctx, req)
	if err == nil && rep == nil {
		err = Errorf(syscall.EIO, "agent produced no HELLO reply")
	}
	if err != nil {
		cs.log.Warn("broker hello failed", "err", err)
		return cs.errorFrame(h, err), nil, true
	}
	r := *rep
	r.Version = min(req.Version, uint16(Version))
	r.Caps &= req.Caps
	out, err := encodeReply(h.ID, &r)
	if err != nil {
		cs.log.Error("broker session returned an invalid HELLO reply", "err", err)
		return cs.errorFrame(h, Errorf(syscall.EIO, "agent produced an invalid HELLO reply: %v", err)), nil, true
	}
	cs.log.Info("broker session open", "client", req.Name, "version", r.Version, "caps", uint64(r.Caps))
	return out, nil, false
}

func (cs *connState) dispatch(ctx context.Context, req Message) (Message, FD, error) {
	s := cs.sess
	var none FD
	switch r := req.(type) {
	case *AllocPDRequest:
		rep, err := s.AllocPD(ctx, r)
		return nilIfErr(rep, err), none, err
	case *RegMemRequest:
		rep, fd, err := s.RegisterMemory(ctx, r)
		return nilIfErr(rep, err), fd, err
	case *AllocVIRequest:
		rep, fd, err := s.AllocVI(ctx, r)
		return nilIfErr(rep, err), fd, err
	case *FilterAddRequest:
		rep, err := s.FilterAdd(ctx, r)
		return nilIfErr(rep, err), none, err
	case *FilterDelRequest:
		return &EmptyReply{Req: TypeFilterDel}, none, s.FilterDel(ctx, r)
	case *StatsRequest:
		rep, err := s.Stats(ctx, r)
		return nilIfErr(rep, err), none, err
	case *FreeVIRequest:
		return &EmptyReply{Req: TypeFreeVI}, none, s.FreeVI(ctx, r)
	case *FreeMemRequest:
		return &EmptyReply{Req: TypeFreeMem}, none, s.FreeMem(ctx, r)
	case *FreePDRequest:
		return &EmptyReply{Req: TypeFreePD}, none, s.FreePD(ctx, r)
	case *ByeRequest:
		// Free everything before answering: the reply means "all released".
		cs.close()
		return &EmptyReply{Req: TypeBye}, none, nil
	}
	return nil, none, Errorf(syscall.EOPNOTSUPP, "request %v not handled", req.Type())
}

// nilIfErr keeps a typed nil pointer from becoming a non-nil Message.
func nilIfErr[T any, P interface {
	*T
	Message
}](rep P, err error) Message {
	if err != nil || rep == nil {
		return nil
	}
	return rep
}

func (cs *connState) malformedReply(h Header, err error) ([]byte, []FD, bool) {
	cs.malformed++
	closeAfter := cs.malformed >= cs.srv.cfg.MaxMalformed
	cs.log.Info("broker malformed request", "type", h.Type, "id", h.ID, "err", err, "count", cs.malformed, "closing", closeAfter)
	return cs.errorFrame(h, err), nil, closeAfter
}

func (cs *connState) errorFrame(h Header, err error) []byte {
	out, eerr := encodeReply(h.ID, errorReplyFor(err))
	if eerr != nil { // cannot happen: errorReplyFor sanitizes
		out, _ = encodeReply(h.ID, &ErrorReply{Errno: syscall.EIO})
	}
	return out
}

func encodeReply(id uint32, m Message) ([]byte, error) {
	if m == nil {
		return nil, errors.New("nil reply")
	}
	p, err := m.MarshalBinary()
	if err != nil {
		return nil, err
	}
	return AppendFrame(make([]byte, 0, HeaderSize+len(p)), m.Type(), id, p)
}
