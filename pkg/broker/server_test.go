package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// testLogger writes the server's logs into the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tw{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tw struct{ t testing.TB }

func (w tw) Write(p []byte) (int, error) { w.t.Log(string(bytes.TrimSpace(p))); return len(p), nil }

// waitFor bounds waits for events that must happen; hitting it is a failure
// (the event never came), not a timing assertion.
const waitFor = 30 * time.Second

type testServer struct {
	srv  *Server
	path string
	fact *fakeFactory
	stop func() // cancels Serve and waits for it to return
}

func startServer(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "efb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ts := &testServer{path: filepath.Join(dir, "vi.sock"), fact: newFakeFactory()}
	cfg := Config{Path: ts.path, Sessions: ts.fact, Logger: testLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	ts.srv, err = Listen(cfg)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.srv.Serve(ctx) }()
	stopped := false
	ts.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(waitFor):
			t.Fatal("Serve did not return after cancel")
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

func dial(t *testing.T, path string, opts ...DialOption) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := Dial(ctx, path, opts...)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nextSession(t *testing.T, f *fakeFactory) *fakeSession {
	t.Helper()
	select {
	case s := <-f.created:
		return s
	case <-time.After(waitFor):
		t.Fatal("no session created")
		return nil
	}
}

func waitClosed(t *testing.T, s *fakeSession) {
	t.Helper()
	select {
	case <-s.closed:
	case <-time.After(waitFor):
		t.Fatal("session Close never called")
	}
}

func cloexec(t *testing.T, fd int) bool {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatalf("F_GETFD %d: %v", fd, err)
	}
	return fl&unix.FD_CLOEXEC != 0
}

func fileFD(t *testing.T, f *os.File) int {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(u uintptr) { fd = int(u) })
	return fd
}

func TestEndToEnd(t *testing.T) {
	ts := startServer(t, nil)
	ctx := context.Background()
	c := dial(t, ts.path, WithName("e2e"), WithCaps(CapAFXDP|CapStats|CapNeedWakeup))
	sess := nextSession(t, ts.fact)

	h := c.Hello()
	if h.Pool != "eth1" || h.IfName != "eth1" || h.MTU != 1500 || len(h.Devices) != 1 || len(h.Addrs) != 2 || h.Version != 1 {
		t.Fatalf("hello %+v", h)
	}
	if h.Caps != CapAFXDP|CapStats { // server AFXDP|Filters|Stats ∩ client AFXDP|Stats|NeedWakeup
		t.Fatalf("caps %#x, want intersection %#x", h.Caps, CapAFXDP|CapStats)
	}
	if sess.peer.UID != uint32(os.Getuid()) || sess.peer.GID != uint32(os.Getgid()) || sess.peer.PID != int32(os.Getpid()) {
		t.Fatalf("peer %v, want pid %d uid %d gid %d", sess.peer, os.Getpid(), os.Getuid(), os.Getgid())
	}

	pd, err := c.AllocPD(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	mr, err := c.RegisterMemory(ctx, pd, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer mr.File.Close()
	mfd := fileFD(t, mr.File)
	if !cloexec(t, mfd) {
		t.Error("memory fd is not close-on-exec")
	}
	var st unix.Stat_t
	if err := unix.Fstat(mfd, &st); err != nil || st.Size != 1<<20 || mr.Size != 1<<20 || mr.ChunkSize != 2048 {
		t.Fatalf("memfd size %d, reply %+v, err %v", st.Size, mr, err)
	}
	// Same object: write through the client's fd, read through the session's.
	if _, err := unix.Pwrite(mfd, []byte("packet memory"), 4096); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 13)
	sess.mu.Lock()
	sfd := sess.mems[mr.ID]
	sess.mu.Unlock()
	if _, err := unix.Pread(sfd, buf, 4096); err != nil || string(buf) != "packet memory" {
		t.Fatalf("session memfd reads %q, %v", buf, err)
	}

	vi, err := c.AllocVI(ctx, AllocVIRequest{PD: pd, MemReg: mr.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer vi.File.Close()
	vfd := fileFD(t, vi.File)
	if !cloexec(t, vfd) {
		t.Error("VI fd is not close-on-exec")
	}
	if vi.RxSize != 512 || vi.FillSize != 1024 || vi.FrameSize != 2048 || vi.Headroom != 256 {
		t.Fatalf("geometry %+v", vi.Geometry)
	}
	if _, err := unix.Write(vfd, []byte("kick")); err != nil {
		t.Fatal(err)
	}
	sess.mu.Lock()
	keep := sess.vis[vi.ID]
	sess.mu.Unlock()
	n, err := unix.Read(keep, buf)
	if err != nil || string(buf[:n]) != "kick" {
		t.Fatalf("session end of VI reads %q, %v", buf[:n], err)
	}

	ck, err := c.FilterAdd(ctx, vi.ID, "udp:10.0.0.2:8080", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		spec  string
		errno syscall.Errno
	}{{"udp:10.0.0.2:8080", syscall.EEXIST}, {"multicast-all", syscall.EPERM}, {"sniff:promisc", 0}, {"sniff", syscall.EBUSY}} {
		_, err := c.FilterAdd(ctx, vi.ID, tc.spec, 0)
		if tc.errno == 0 {
			if err != nil {
				t.Fatalf("%s: %v", tc.spec, err)
			}
			continue
		}
		var be *Error
		if !errors.Is(err, tc.errno) || !errors.As(err, &be) || be.Errno != tc.errno {
			t.Fatalf("%s: err %v, want %v", tc.spec, err, tc.errno)
		}
	}
	stats, err := c.Stats(ctx, vi.ID, false)
	if err != nil || len(stats) != 3 || stats[0] != (Stat{"rx_packets", 42}) || stats[2] != (Stat{"filters", 2}) {
		t.Fatalf("stats %v, %v", stats, err)
	}
	if err := c.FilterDel(ctx, vi.ID, ck); err != nil {
		t.Fatal(err)
	}
	if err := c.FilterDel(ctx, vi.ID, ck); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("second delete: %v, want ENOENT", err)
	}
	if _, err := c.RegisterMemory(ctx, pd, 128<<20); !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("oversize memory: %v, want ENOMEM", err)
	}
	if _, err := c.RegisterMemory(ctx, pd, 1000); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("unaligned memory: %v, want EINVAL", err)
	}
	if _, err := c.AllocVI(ctx, AllocVIRequest{PD: 99, MemReg: mr.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("VI on unknown PD: %v, want EINVAL", err)
	}
	// Errors leave the connection usable.
	if err := c.FreeVI(ctx, vi.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.FreeMem(ctx, mr.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.FreePD(ctx, pd); err != nil {
		t.Fatal(err)
	}
	if got := sess.held(); got != 1 { // the sniff filter was never deleted
		t.Fatalf("session holds %d resources, want 1", got)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if sess.closes.Load() != 1 || sess.held() != 0 { // BYE answers after freeing
		t.Fatalf("after Close: session closes %d, holds %d", sess.closes.Load(), sess.held())
	}
	if _, err := c.AllocPD(ctx, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	ts.stop()
	if n := sess.closes.Load(); n != 1 {
		t.Fatalf("session closed %d times, want 1", n)
	}
	if _, err := os.Lstat(ts.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left behind: %v", err)
	}
}

func TestSocketFileMode(t *testing.T) {
	var chowned string
	ts := startServer(t, func(c *Config) {
		c.Mode = 0o660
		c.Chown = func(p string) error { chowned = p; return nil }
	})
	fi, err := os.Lstat(ts.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket || chowned != ts.path {
		t.Fatalf("mode %v, chown hook got %q", fi.Mode(), chowned)
	}
	if _, err := Listen(Config{Path: ts.path + "x", Sessions: ts.fact, Mode: 0o777}); err == nil {
		t.Fatal("mode 0777 accepted")
	}
	notSock := filepath.Join(filepath.Dir(ts.path), "plain")
	os.WriteFile(notSock, nil, 0o600)
	if _, err := Listen(Config{Path: notSock, Sessions: ts.fact}); err == nil {
		t.Fatal("listening over a regular file")
	}
}

func TestDisconnectFreesEverything(t *testing.T) {
	ts := startServer(t, nil)
	ctx := context.Background()
	c := dial(t, ts.path)
	sess := nextSession(t, ts.fact)
	pd, _ := c.AllocPD(ctx, 0)
	mr, err := c.RegisterMemory(ctx, pd, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	mr.File.Close()
	vi, err := c.AllocVI(ctx, AllocVIRequest{PD: pd, MemReg: mr.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
	if err != nil {
		t.Fatal(err)
	}
	vi.File.Close()
	if _, err := c.FilterAdd(ctx, vi.ID, "udp:10.0.0.2:1", 0); err != nil {
		t.Fatal(err)
	}
	if sess.held() != 4 {
		t.Fatalf("held %d", sess.held())
	}
	// Drop the connection without BYE, as a crashing client would.
	c.c.Close()
	waitClosed(t, sess)
	if sess.held() != 0 {
		t.Fatalf("session still holds %d resources after disconnect", sess.held())
	}
	ts.stop()
	if n := sess.closes.Load(); n != 1 {
		t.Fatalf("Close called %d times", n)
	}
}

// rawConn is a SOCK_SEQPACKET connection speaking frames by hand.
type rawConn struct {
	t  *testing.T
	c  *net.UnixConn
	fc *frameConn
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	nc, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	fc, err := newFrameConn(nc.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	return &rawConn{t, nc.(*net.UnixConn), fc}
}

func (r *rawConn) send(b []byte, fds ...int) {
	r.t.Helper()
	if err := r.fc.write(b, fds); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

func frame(t MsgType, id uint32, p []byte) []byte {
	b, err := AppendFrame(nil, t, id, p)
	if err != nil {
		panic(err)
	}
	return b
}

func helloFrame(id uint32) []byte {
	p, _ := (&HelloRequest{Version: 1, Caps: AllCaps}).MarshalBinary()
	return frame(TypeHello, id, p)
}

// recv reads one reply; closed reports EOF instead.
func (r *rawConn) recv() (h Header, m Message, closed bool) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(waitFor))
	b, fds, _, err := r.fc.read()
	closeFDs(fds)
	if isClosed(err) {
		return h, nil, true
	}
	if err != nil {
		r.t.Fatalf("recv: %v", err)
	}
	h, p, err := DecodeFrame(b)
	if err != nil {
		r.t.Fatalf("reply frame: %v", err)
	}
	if m, err = DecodeReply(h.Type, p); err != nil {
		r.t.Fatalf("reply payload: %v", err)
	}
	return h, m, false
}

func (r *rawConn) wantErr(id uint32, errno syscall.Errno) {
	r.t.Helper()
	h, m, closed := r.recv()
	if closed {
		r.t.Fatalf("connection closed, want ERROR %v for id %d", errno, id)
	}
	er, ok := m.(*ErrorReply)
	if !ok || h.ID != id || er.Errno != errno {
		r.t.Fatalf("reply %v id %d %+v, want ERROR %v (%d) for id %d", h.Type, h.ID, m, errno, int(errno), id)
	}
	r.t.Logf("id %d: %v", id, er.Err())
}

func (r *rawConn) wantClosed() {
	r.t.Helper()
	if h, m, closed := r.recv(); !closed {
		r.t.Fatalf("got %v %+v, want the connection closed", h.Type, m)
	}
}

func TestMalformedFrames(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxMalformed = 5 })
	ctx := context.Background()
	good := dial(t, ts.path) // a well-behaved neighbour that must keep working
	goodSess := nextSession(t, ts.fact)

	r := dialRaw(t, ts.path)
	r.send(frame(0x42, 1, nil)) // unknown type before HELLO: answered, not counted
	r.wantErr(1, syscall.EOPNOTSUPP)
	r.send(frame(TypeAllocPD, 2, payload(uint32(0)))) // request before HELLO
	r.wantErr(2, syscall.EPROTO)
	r.send(helloFrame(3))
	if h, m, closed := r.recv(); closed || h.Type != TypeHello.Reply() || h.ID != 3 {
		t.Fatalf("hello reply %v %+v closed=%v", h.Type, m, closed)
	}
	nextSession(t, ts.fact)
	r.send(frame(0xC3, 4, []byte{1, 2, 3})) // unknown (reply-range) type
	r.wantErr(4, syscall.EOPNOTSUPP)
	tr := frame(TypeRegMem, 5, payload(uint32(1), uint32(0), uint64(2048)))
	r.send(tr[:len(tr)-3]) // truncated payload
	r.wantErr(5, syscall.EINVAL)
	r.send(frame(TypeRegMem, 6, payload(uint32(1), uint32(0), uint64(1000)))) // bad size
	r.wantErr(6, syscall.EINVAL)
	big := make([]byte, MaxMessageSize+1000)
	copy(big, frame(TypeFilterAdd, 7, nil))
	r.send(big) // oversize: the kernel truncates, the server says EMSGSIZE
	r.wantErr(7, syscall.EMSGSIZE)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r.send(frame(TypeAllocPD, 8, payload(uint32(0))), pipe[0]) // 5th malformed: fds attached
	r.wantErr(8, syscall.EINVAL)
	r.wantClosed()
	unix.Close(pipe[0])
	// The server closed its copy of the smuggled fd: the pipe has no reader left.
	if _, err := unix.Write(pipe[1], []byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Errorf("write to pipe after the server dropped its copy: %v, want EPIPE (server leaked the fd)", err)
	}
	unix.Close(pipe[1])

	// Bad version, then second HELLO.
	r2 := dialRaw(t, ts.path)
	r2.send(helloFrame(1))
	r2.recv()
	v := helloFrame(2)
	v[2] = 2
	r2.send(v)
	r2.wantErr(2, syscall.EPROTONOSUPPORT)
	r2.send(helloFrame(3))
	r2.wantErr(3, syscall.EPROTO)

	// Garbage: no magic → closed without reply.
	r3 := dialRaw(t, ts.path)
	r3.send([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	r3.wantClosed()
	r4 := dialRaw(t, ts.path)
	r4.send([]byte{0x71})
	r4.wantClosed()

	if _, err := good.AllocPD(ctx, 0); err != nil {
		t.Fatalf("neighbour broken by garbage on other connections: %v", err)
	}
	if goodSess.held() != 1 {
		t.Fatal("neighbour session lost state")
	}
}

func TestAuthorizerRejects(t *testing.T) {
	other := uint32(os.Getuid()) + 4242
	ts := startServer(t, func(c *Config) { c.Authorizer = AllowUIDs(other) })
	_, err := Dial(context.Background(), ts.path)
	if !errors.Is(err, syscall.EPERM) {
		t.Fatalf("dial as uid %d with only %d allowed: %v, want EPERM", os.Getuid(), other, err)
	}
	t.Log(err)
	if ts.fact.count() != 0 {
		t.Fatal("a session was created for a rejected peer")
	}
	// Raw: the first request of any type gets EPERM, then the connection closes.
	r := dialRaw(t, ts.path)
	r.send(frame(TypeAllocPD, 9, payload(uint32(0))))
	r.wantErr(9, syscall.EPERM)
	r.wantClosed()
}

func TestAllowUIDsAccepts(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Authorizer = AllowUIDs(uint32(os.Getuid())) })
	dial(t, ts.path)
}

func TestMaxConns(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxConns = 1 })
	c1 := dial(t, ts.path)
	s1 := nextSession(t, ts.fact)
	_, err := Dial(context.Background(), ts.path)
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("second connection: %v, want EBUSY", err)
	}
	// BYE is answered after the session is closed and its slot released, so
	// a client can reconnect as soon as Close returns.
	c1.Close()
	if s1.closes.Load() != 1 {
		t.Fatal("Close returned before the session was freed")
	}
	c2, err := Dial(context.Background(), ts.path)
	if err != nil {
		t.Fatalf("reconnect after Close: %v", err)
	}
	c2.Close()
}

func TestHelloTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.HelloTimeout = 50 * time.Millisecond })
	r := dialRaw(t, ts.path)
	r.wantClosed() // silent clients are dropped
	dial(t, ts.path)
}

func TestServeStopClosesSessions(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.path)
	s := nextSession(t, ts.fact)
	if _, err := c.AllocPD(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	ts.stop()
	if s.closes.Load() != 1 || s.held() != 0 {
		t.Fatalf("after stop: closes %d held %d", s.closes.Load(), s.held())
	}
	if _, err := c.AllocPD(context.Background(), 0); err == nil {
		t.Fatal("request succeeded on a stopped server")
	}
}

func TestClientContext(t *testing.T) {
	ts := startServer(t, nil)
	c := dial(t, ts.path)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.AllocPD(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled ctx: %v", err)
	}
	// Cancelled before sending: the connection is still good.
	if _, err := c.AllocPD(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
}

// TestClientRejectsBadReplies runs the client against a hand-written server
// that answers with wrong ids, wrong types and unexpected fds.
func TestClientRejectsBadReplies(t *testing.T) {
	allocPD := func(c *Client) error { _, err := c.AllocPD(context.Background(), 0); return err }
	regMem := func(c *Client) error { _, err := c.RegisterMemory(context.Background(), 1, 2048); return err }
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[0])
	defer unix.Close(pipe[1])
	cases := []struct {
		name  string
		call  func(*Client) error
		reply func(id uint32) ([]byte, []int)
	}{
		{"wrong id", allocPD, func(id uint32) ([]byte, []int) { return frame(TypeAllocPD.Reply(), id+5, payload(uint32(1))), nil }},
		{"wrong type", allocPD, func(id uint32) ([]byte, []int) { return frame(TypeStats.Reply(), id, payload(uint16(0))), nil }},
		{"missing fd", regMem, func(id uint32) ([]byte, []int) {
			return frame(TypeRegMem.Reply(), id, payload(uint32(1), uint32(2048), uint64(2048))), nil
		}},
		{"unexpected fd", allocPD, func(id uint32) ([]byte, []int) {
			return frame(TypeAllocPD.Reply(), id, payload(uint32(1))), []int{pipe[0]}
		}},
		{"bad payload", allocPD, func(id uint32) ([]byte, []int) { return frame(TypeAllocPD.Reply(), id, payload(uint32(0))), nil }},
		{"garbage", allocPD, func(id uint32) ([]byte, []int) { return []byte("nope"), nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fds0 := countFDs(t)
			a, b := seqpacketPair(t)
			c := &Client{c: a}
			c.fc, _ = newFrameConn(a)
			srv, _ := newFrameConn(b)
			done := make(chan struct{})
			go func() {
				defer close(done)
				raw, _, _, err := srv.read()
				if err != nil {
					return
				}
				h, _, _ := DecodeFrame(raw)
				out, fds := tc.reply(h.ID)
				srv.write(out, fds)
			}()
			err := tc.call(c)
			<-done
			if err == nil {
				t.Fatal("bad reply accepted")
			}
			t.Log(err)
			if err2 := allocPD(c); err2 == nil {
				t.Fatal("client still usable after a protocol violation")
			}
			a.Close()
			b.Close()
			if n := countFDs(t); n != fds0 {
				t.Fatalf("client leaked fds: %d before, %d after", fds0, n)
			}
		})
	}
}

func seqpacketPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conv(p[0]), conv(p[1])
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestNoLeaks runs a busy scenario (good clients, errors, garbage, abrupt
// disconnects) and checks that fds and goroutines return to their baseline.
func TestNoLeaks(t *testing.T) {
	// Warm up the runtime's poller so its fds are in the baseline.
	warm := startServer(t, nil)
	dial(t, warm.path).Close()
	warm.stop()

	// Goroutines alive now (the test runner's, the warm-up's leftovers) are
	// the baseline; goleak names every other one still running at the end.
	fds0, baseline := countFDs(t), goleak.IgnoreCurrent()
	func() {
		ts := startServer(t, func(c *Config) { c.MaxConns = 8 })
		ctx := context.Background()
		for i := 0; i < 5; i++ {
			c, err := Dial(ctx, ts.path)
			if err != nil {
				t.Fatal(err)
			}
			pd, _ := c.AllocPD(ctx, 0)
			mr, err := c.RegisterMemory(ctx, pd, 8192)
			if err != nil {
				t.Fatal(err)
			}
			vi, err := c.AllocVI(ctx, AllocVIRequest{PD: pd, MemReg: mr.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
			if err != nil {
				t.Fatal(err)
			}
			c.FilterAdd(ctx, vi.ID, "udp:10.0.0.2:9", 0)
			c.FilterAdd(ctx, vi.ID, "udp:10.0.0.2:9", 0) // EEXIST
			mr.File.Close()
			vi.File.Close()
			if i%2 == 0 {
				c.Close()
			} else {
				c.c.Close() // abrupt
				c.Close()
			}
			r := dialRaw(t, ts.path)
			r.send([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13})
			r.wantClosed()
			r.c.Close()
		}
		ts.stop()
	}()
	if fds1 := countFDs(t); fds1 != fds0 {
		t.Errorf("fd leak: %d open before, %d after", fds0, fds1)
	}
	// Goroutines that end on their own get until waitFor (each Find retries
	// for a while itself); VerifyNone then names any still running.
	for deadline := time.Now().Add(waitFor); goleak.Find(baseline) != nil && time.Now().Before(deadline); {
	}
	goleak.VerifyNone(t, baseline)
}

// badSession returns fds together with errors, or the wrong number of fds.
type badSession struct {
	*fakeSession
	fd int
}

func (b *badSession) RegisterMemory(context.Context, *RegMemRequest) (*RegMemReply, FD, error) {
	return nil, TransferFD(b.fd), Errorf(syscall.ENOMEM, "no memory, but here is an fd anyway")
}

func (b *badSession) AllocVI(context.Context, *AllocVIRequest) (*AllocVIReply, FD, error) {
	return &AllocVIReply{VI: 1, Geometry: Geometry{RxSize: 8, FillSize: 8, FrameSize: 2048}}, FD{}, nil
}

func TestServerFDOwnership(t *testing.T) {
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pipe[1])
	ts := startServer(t, func(c *Config) {
		c.Sessions = SessionFactoryFunc(func(_ context.Context, p Peer) (Session, error) {
			return &badSession{newFakeSession(p), pipe[0]}, nil
		})
	})
	c := dial(t, ts.path)
	ctx := context.Background()
	if _, err := c.RegisterMemory(ctx, 1, 2048); !errors.Is(err, syscall.ENOMEM) {
		t.Fatalf("register: %v, want ENOMEM", err)
	}
	// The transferred fd was closed by the server, not sent with the error.
	if _, err := unix.Write(pipe[1], []byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("transferred fd still open after an error reply: write gives %v, want EPIPE", err)
	}
	if _, err := c.AllocVI(ctx, AllocVIRequest{PD: 1, MemReg: 1, RxqCap: -1}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("VI reply without its fd: %v, want EIO", err)
	}
	if _, err := c.AllocPD(ctx, 0); err != nil {
		t.Fatalf("connection unusable after a session bug: %v", err)
	}
}

// BenchmarkStatsRoundTrip measures one control-path request/reply over the socket.
func BenchmarkStatsRoundTrip(b *testing.B) {
	dir, _ := os.MkdirTemp("", "efb")
	defer os.RemoveAll(dir)
	fact := newFakeFactory()
	srv, err := Listen(Config{Path: filepath.Join(dir, "s"), Sessions: fact, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	c, err := Dial(context.Background(), srv.Path())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pd, _ := c.AllocPD(ctx, 0)
	mr, _ := c.RegisterMemory(ctx, pd, 2048)
	mr.File.Close()
	vi, err := c.AllocVI(ctx, AllocVIRequest{PD: pd, MemReg: mr.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
	if err != nil {
		b.Fatal(err)
	}
	vi.File.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Stats(ctx, vi.ID, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllocVIRoundTrip measures ALLOC_VI + FREE_VI including fd passing.
func BenchmarkAllocVIRoundTrip(b *testing.B) {
	dir, _ := os.MkdirTemp("", "efb")
	defer os.RemoveAll(dir)
	srv, err := Listen(Config{Path: filepath.Join(dir, "s"), Sessions: newFakeFactory(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	c, err := Dial(context.Background(), srv.Path())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pd, _ := c.AllocPD(ctx, 0)
	mr, _ := c.RegisterMemory(ctx, pd, 2048)
	mr.File.Close()
	b.ReportAllocs()
	for b.Loop() {
		vi, err := c.AllocVI(ctx, AllocVIRequest{PD: pd, MemReg: mr.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
		if err != nil {
			b.Fatal(err)
		}
		vi.File.Close()
		if err := c.FreeVI(ctx, vi.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRequestIDZeroRefused: ids are never 0 (package doc); a request with id
// 0 is malformed, before and after HELLO, and its ERROR echoes id 0.
func TestRequestIDZeroRefused(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxMalformed = 3 })
	r := dialRaw(t, ts.path)
	r.send(helloFrame(0))
	r.wantErr(0, syscall.EINVAL)
	if ts.fact.count() != 0 {
		t.Fatal("a HELLO with id 0 created a session")
	}
	r.send(helloFrame(1))
	if h, m, closed := r.recv(); closed || h.Type != TypeHello.Reply() || h.ID != 1 {
		t.Fatalf("hello reply %v %+v closed=%v", h.Type, m, closed)
	}
	s := nextSession(t, ts.fact)
	r.send(frame(TypeAllocPD, 0, payload(uint32(0))))
	r.wantErr(0, syscall.EINVAL)
	if s.held() != 0 {
		t.Fatal("ALLOC_PD with id 0 reached the session")
	}
	r.send(frame(TypeBye, 0, nil)) // third malformed frame: closed after the reply
	r.wantErr(0, syscall.EINVAL)
	r.wantClosed()
}

// TestSilentConnectionsHoldNoSessionSlot: connections that never say HELLO
// take no session slot (the slot is taken at HELLO), so a well-behaved
// client still gets in while they wait for their HELLO deadline.
func TestSilentConnectionsHoldNoSessionSlot(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxConns = 2; c.MaxPending = 8; c.HelloTimeout = time.Hour })
	for range 4 {
		dialRaw(t, ts.path) // silent
	}
	c1 := dial(t, ts.path)
	dial(t, ts.path)
	_, err := Dial(context.Background(), ts.path)
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("third session with MaxConns 2: %v, want EBUSY", err)
	}
	t.Log(err)
	c1.Close()
	dial(t, ts.path)
}

// TestPendingLimit: over MaxPending connections waiting for HELLO, new ones
// are closed at once; a pending one that says HELLO still gets in.
func TestPendingLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxPending = 2; c.HelloTimeout = time.Hour })
	r1 := dialRaw(t, ts.path)
	dialRaw(t, ts.path)
	dialRaw(t, ts.path).wantClosed()
	r1.send(helloFrame(1))
	if h, _, closed := r1.recv(); closed || h.Type != TypeHello.Reply() {
		t.Fatalf("pending connection's HELLO: %v closed=%v", h.Type, closed)
	}
	dial(t, ts.path) // r1 left the pending set at HELLO
}

// TestIdleTimeout: a session idle past IdleTimeout is closed when it holds
// nothing, kept when it holds resources (a pod's silent VI connection).
func TestIdleTimeout(t *testing.T) {
	const idle = 50 * time.Millisecond
	ts := startServer(t, func(c *Config) { c.IdleTimeout = idle })
	dial(t, ts.path)
	s := nextSession(t, ts.fact)
	waitClosed(t, s) // idle and holding nothing

	c := dial(t, ts.path)
	s2 := nextSession(t, ts.fact)
	if _, err := c.AllocPD(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * idle) // several idle periods pass
	if s2.closes.Load() != 0 {
		t.Fatal("an idle session holding resources was closed")
	}
	if _, err := c.AllocPD(context.Background(), 0); err != nil {
		t.Fatalf("holding session after idle periods: %v", err)
	}
}

// TestWriteTimeout: a client that sends requests and never reads the replies
// fills its socket; the server's reply times out, the connection is closed
// and the session freed, instead of a server goroutine blocking in sendmsg.
func TestWriteTimeout(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.WriteTimeout = 100 * time.Millisecond })
	r := dialRaw(t, ts.path)
	r.send(helloFrame(1))
	if h, _, closed := r.recv(); closed || h.Type != TypeHello.Reply() {
		t.Fatalf("hello: %v closed=%v", h.Type, closed)
	}
	s := nextSession(t, ts.fact)
	// Unknown request types are answered and not counted as malformed: an
	// endless supply of replies the client never reads.
	raw, err := r.c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	f := frame(0x42, 2, nil)
	deadline := time.Now().Add(waitFor)
	for sent := 0; s.closes.Load() == 0; {
		var serr error
		_ = raw.Control(func(fd uintptr) { serr = unix.Sendmsg(int(fd), f, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL) })
		switch {
		case serr == nil:
			sent++
		case errors.Is(serr, unix.EAGAIN):
			time.Sleep(10 * time.Millisecond) // both directions full: the server is stuck in its reply
		case errors.Is(serr, unix.EPIPE), errors.Is(serr, unix.ECONNRESET):
			t.Logf("server closed the connection after %d unread replies", sent)
			waitClosed(t, s)
			return
		default:
			t.Fatalf("send: %v", serr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("session still open after %d unread replies", sent)
		}
	}
	waitClosed(t, s)
}
