package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// logRec records log lines for the tests that want a log line per refusal.
type logRec struct {
	mu    sync.Mutex
	lines []string
}

func (l *logRec) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRec) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logRec) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRec) WithGroup(string) slog.Handler      { return l }

// waitFor polls the log for a line containing all of parts (no timing
// assertion: it waits as long as the test's deadline allows).
func (l *logRec) waitFor(t *testing.T, parts ...string) string {
	t.Helper()
	for {
		l.mu.Lock()
		for _, ln := range l.lines {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(ln, p)
			}
			if ok {
				l.mu.Unlock()
				return ln
			}
		}
		n := len(l.lines)
		l.mu.Unlock()
		if dl, ok := t.Deadline(); ok && time.Until(dl) < time.Second {
			t.Fatalf("no log line with %q among %d lines", parts, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeHW is an Allocator serving one cluster with an fd of a real file.
type fakeHW struct {
	name   string
	file   *os.File
	calls  atomic.Int32
	dones  atomic.Int32
	err    error
	ifname string
}

func (f *fakeHW) Allocate(_ context.Context, req Request) (Grant, error) {
	f.calls.Add(1)
	if f.err != nil {
		return Grant{}, f.err
	}
	if req.Cluster != f.name {
		return Grant{}, ErrNoCluster
	}
	ifn := f.ifname
	if ifn == "" {
		ifn = "ens1f0np0"
	}
	return Grant{PDResID: 17, VISetResID: 42, IfName: ifn, FD: int(f.file.Fd()), Done: func() { f.dones.Add(1) }}, nil
}

type harness struct {
	srv  *Server
	hw   *fakeHW
	log  *logRec
	path string
	done chan error
}

func startServer(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	f, err := os.CreateTemp(dir, "sfc_char-stand-in")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	h := &harness{hw: &fakeHW{name: "alloc-1", file: f}, log: &logRec{}, path: filepath.Join(dir, "cluster.sock"), done: make(chan error, 1)}
	cfg := Config{Path: h.path, Allocator: h.hw, Logger: slog.New(h.log), RequestTimeout: 20 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	h.srv, err = Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- h.srv.Serve(context.Background()) }()
	t.Cleanup(func() {
		_ = h.srv.Close()
		if err := <-h.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Lstat(h.path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file left behind: %v", err)
		}
	})
	return h
}

func (h *harness) dial(t *testing.T) *testClient {
	t.Helper()
	c, err := dialTest(h.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sameFile(t *testing.T, a, b int) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func TestClusterHandshakeSuccess(t *testing.T) {
	h := startServer(t, nil)
	c := h.dial(t)
	if err := c.version(ProtocolVersion); err != nil {
		t.Fatalf("version: %v", err)
	}
	res, err := c.alloc("alloc-1", 0x2)
	if err != nil {
		t.Fatalf("alloc: %v", err)
	}
	defer unix.Close(res.fd)
	if res.pdRes != 17 || res.visetRes != 42 || res.ifname != "ens1f0np0" {
		t.Fatalf("grant %+v, want pd 17 viset 42 ens1f0np0", res)
	}
	if res.fd == int(h.hw.file.Fd()) || !sameFile(t, res.fd, int(h.hw.file.Fd())) {
		t.Fatalf("received fd %d is not a new descriptor of the allocator's file", res.fd)
	}
	// The passed fd works: write through it, read through the original.
	if _, err := unix.Write(res.fd, []byte("via-passed-fd")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(h.hw.file.Name())
	if string(b) != "via-passed-fd" {
		t.Fatalf("file holds %q", b)
	}
	h.log.waitFor(t, "cluster allocated", "cluster=alloc-1", "pd_flags=2")
	if h.hw.dones.Load() != 0 {
		t.Fatal("Done called while the client still holds its PD")
	}
	// ef_pd_free closes the socket: the server sees EOF and calls Done.
	c.Close()
	h.log.waitFor(t, "cluster client done (EOF)")
	for h.hw.dones.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// The allocator's own fd stays open (the server never closes it).
	if _, err := unix.FcntlInt(h.hw.file.Fd(), unix.F_GETFD, 0); err != nil {
		t.Fatalf("allocator fd closed by the server: %v", err)
	}
}

func TestClusterHandshakeUnknownCluster(t *testing.T) {
	h := startServer(t, nil)
	c := h.dial(t)
	if err := c.version(ProtocolVersion); err != nil {
		t.Fatal(err)
	}
	if _, err := c.alloc("no-such", 0); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("alloc of an unknown cluster: %v, want ENOENT (libciul then falls back to ef_pd_alloc)", err)
	}
	if err := c.expectClosed(); err != nil {
		t.Fatal(err)
	}
	h.log.waitFor(t, "cluster allocate refused", "cluster=no-such", "errno=no such file or directory")
}

func TestClusterHandshakeVersionMismatch(t *testing.T) {
	h := startServer(t, nil)
	c := h.dial(t)
	if err := c.version(2); !errors.Is(err, syscall.EBADRQC) {
		t.Fatalf("version 2: %v, want the mismatch reply (client: -EBADRQC)", err)
	}
	if err := c.expectClosed(); err != nil {
		t.Fatal(err)
	}
	h.log.waitFor(t, "cluster request refused", "protocol version 2")
	if h.hw.calls.Load() != 0 {
		t.Fatal("allocator called after a version mismatch")
	}
}

func TestClusterHandshakeDisconnectMidRequest(t *testing.T) {
	h := startServer(t, nil)
	c := h.dial(t)
	if err := c.version(ProtocolVersion); err != nil {
		t.Fatal(err)
	}
	if err := c.send("2 alloc-"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	h.log.waitFor(t, "disconnected mid-request", "bytes=8")
	if h.hw.calls.Load() != 0 {
		t.Fatal("allocator called for a half request")
	}
	// The server is still serving.
	c2 := h.dial(t)
	if err := c2.version(ProtocolVersion); err != nil {
		t.Fatal(err)
	}
	res, err := c2.alloc("alloc-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(res.fd)
}

func TestClusterHandshake10KiBRequest(t *testing.T) {
	for _, tc := range []struct {
		name, prefix string
	}{
		{"first request", ""},
		{"after version", "0 1\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startServer(t, nil)
			c := h.dial(t)
			if tc.prefix != "" {
				if err := c.version(ProtocolVersion); err != nil {
					t.Fatal(err)
				}
			}
			big := "2 " + strings.Repeat("a", 10*1024) + " 0\n"
			if err := c.send(big); err != nil {
				t.Fatal(err)
			}
			if err := c.expectErrnoReply(syscall.EMSGSIZE); err != nil {
				t.Fatal(err)
			}
			if err := c.expectClosed(); err != nil {
				t.Fatal(err)
			}
			h.log.waitFor(t, "cluster request refused", "errno=message too long", "255 bytes")
			if h.hw.calls.Load() != 0 {
				t.Fatal("allocator called for an oversized request")
			}
		})
	}
}

func TestClusterHandshakeGarbage(t *testing.T) {
	for _, tc := range []struct {
		name      string
		version   bool // run the version step first
		req       string
		errno     syscall.Errno
		logReason string
	}{
		{"binary", false, "\x00\xff\x01\n", syscall.EINVAL, "non-printable"},
		{"empty line", false, "\n", syscall.EINVAL, "empty request"},
		{"words", false, "hello there\n", syscall.EINVAL, "not a decimal"},
		{"unknown type", false, "7 1\n", syscall.EBADMSG, "unknown request type 7"},
		{"reply as request", false, "1 0\n", syscall.EBADMSG, "unknown request type 1"},
		{"version bad number", false, "0 x\n", syscall.EINVAL, "version \"x\""},
		{"version extra field", false, "0 1 1\n", syscall.EINVAL, "want 2"},
		{"version signed", false, "0 +1\n", syscall.EINVAL, "not a decimal"},
		{"version double space", false, "0  1\n", syscall.EINVAL, "want 2"},
		{"allocate before version", false, "2 alloc-1 0\n", syscall.EPROTO, "before the version"},
		{"second version", true, "0 1\n", syscall.EPROTO, "second version"},
		{"allocate missing flags", true, "2 alloc-1\n", syscall.EINVAL, "want 3"},
		{"allocate negative flags", true, "2 alloc-1 -1\n", syscall.EINVAL, "pd_flags"},
		{"allocate huge flags", true, "2 alloc-1 99999999999\n", syscall.EINVAL, "pd_flags"},
		{"allocate bad name", true, "2 ../etc 0\n", syscall.EINVAL, "not allowed"},
		{"allocate name with at", true, "2 0@alloc-1 0\n", syscall.EINVAL, "cluster name"},
		{"allocate tab", true, "2\talloc-1 0\n", syscall.EINVAL, "non-printable"},
		{"crlf", true, "2 alloc-1 0\r\n", syscall.EINVAL, "non-printable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startServer(t, nil)
			c := h.dial(t)
			if tc.version {
				if err := c.version(ProtocolVersion); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.send(tc.req); err != nil {
				t.Fatal(err)
			}
			if err := c.expectErrnoReply(tc.errno); err != nil {
				t.Fatal(err)
			}
			if err := c.expectClosed(); err != nil {
				t.Fatal(err)
			}
			h.log.waitFor(t, "cluster request refused", tc.logReason)
			if h.hw.calls.Load() != 0 {
				t.Fatal("allocator called for a bad request")
			}
		})
	}
}

func TestClusterHandshakeAfterGrant(t *testing.T) {
	h := startServer(t, nil)
	c := h.dial(t)
	if err := c.version(ProtocolVersion); err != nil {
		t.Fatal(err)
	}
	res, err := c.alloc("alloc-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(res.fd)
	if err := c.send("2 alloc-1 0\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.expectErrnoReply(syscall.EPROTO); err != nil {
		t.Fatal(err)
	}
	if err := c.expectClosed(); err != nil {
		t.Fatal(err)
	}
	for h.hw.dones.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
}

func TestClusterHandshakeAllocatorErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		ifname string
		want   syscall.Errno
	}{
		{"errno passed through", fmt.Errorf("ef_pd_alloc on ens1f0: %w", syscall.ENOSPC), "", syscall.ENOSPC},
		{"plain error is EIO", errors.New("driver went away"), "", syscall.EIO},
		{"ifname too long for the client", nil, "a-very-long-ifname", syscall.EIO},
		{"ifname with space", nil, "ens 1", syscall.EIO},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startServer(t, nil)
			h.hw.err, h.hw.ifname = tc.err, tc.ifname
			c := h.dial(t)
			if err := c.version(ProtocolVersion); err != nil {
				t.Fatal(err)
			}
			if _, err := c.alloc("alloc-1", 0); !errors.Is(err, tc.want) {
				t.Fatalf("alloc: %v, want %v", err, tc.want)
			}
			if tc.err == nil && h.hw.dones.Load() != 1 {
				t.Fatal("unusable grant not given back (Done)")
			}
		})
	}
}

func TestClusterHandshakeRefusals(t *testing.T) {
	t.Run("unauthorized peer", func(t *testing.T) {
		h := startServer(t, func(c *Config) {
			c.Authorize = func(_ context.Context, pid int32, uid, gid uint32) error {
				if pid != int32(os.Getpid()) {
					return fmt.Errorf("pid %d is not ours", pid)
				}
				return errors.New("not in this pod")
			}
		})
		c := h.dial(t)
		if err := c.send("0 1\n"); err != nil {
			t.Fatal(err)
		}
		if err := c.expectErrnoReply(syscall.EPERM); err != nil {
			t.Fatal(err)
		}
		h.log.waitFor(t, "cluster connection refused", "not in this pod")
	})
	t.Run("too many connections", func(t *testing.T) {
		h := startServer(t, func(c *Config) { c.MaxConns = 1 })
		c1 := h.dial(t)
		if err := c1.version(ProtocolVersion); err != nil {
			t.Fatal(err)
		}
		c2 := h.dial(t)
		if err := c2.send("0 1\n"); err != nil {
			t.Fatal(err)
		}
		if err := c2.expectErrnoReply(syscall.EBUSY); err != nil {
			t.Fatal(err)
		}
		h.log.waitFor(t, "cluster connection refused", "MaxConns")
	})
	t.Run("request timeout", func(t *testing.T) {
		h := startServer(t, func(c *Config) { c.RequestTimeout = 50 * time.Millisecond })
		c := h.dial(t)
		if err := c.expectErrnoReply(syscall.ETIMEDOUT); err != nil {
			t.Fatal(err)
		}
		h.log.waitFor(t, "no complete request within")
	})
}

func TestClusterListen(t *testing.T) {
	dir := t.TempDir()
	alloc := AllocatorFunc(func(context.Context, Request) (Grant, error) { return Grant{}, ErrNoCluster })
	notSock := filepath.Join(dir, "file")
	os.WriteFile(notSock, nil, 0o600)
	for _, cfg := range []Config{
		{Path: "", Allocator: alloc},
		{Path: filepath.Join(dir, "s"), Allocator: nil},
		{Path: filepath.Join(dir, "s"), Allocator: alloc, Mode: 0o777},
		{Path: notSock, Allocator: alloc},
		{Path: "/" + strings.Repeat("x", 120), Allocator: alloc},
	} {
		if s, err := Listen(cfg); err == nil {
			s.Close()
			t.Errorf("Listen(%+v) accepted", cfg)
		}
	}
	// A stale socket is replaced; the mode is applied.
	s, err := Listen(Config{Path: filepath.Join(dir, "s"), Allocator: alloc, Mode: 0o666})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	unixSock, _ := Listen(Config{Path: filepath.Join(dir, "s2"), Allocator: alloc})
	unixSock.ln.SetUnlinkOnClose(false)
	unixSock.ln.Close()
	s, err = Listen(Config{Path: filepath.Join(dir, "s2"), Allocator: alloc, Mode: 0o666})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "s2"))
	if fi.Mode().Perm() != 0o666 {
		t.Errorf("mode %v", fi.Mode())
	}
	s.Close()
}
