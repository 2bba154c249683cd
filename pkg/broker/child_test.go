package broker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"golang.org/x/sys/unix"
)

// Child processes: the test binary re-executes itself with EFB_CHILD set to
// play a pod's SDK in a separate process (killed, or running as another uid).
const (
	envChild = "EFB_CHILD"
	envSock  = "EFB_SOCK"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envChild); mode != "" {
		os.Exit(childMain(mode, os.Getenv(envSock)))
	}
	os.Exit(m.Run())
}

// childMain prints one line per fact on stdout for the parent to check.
func childMain(mode, sock string) int {
	ctx := context.Background()
	fmt.Printf("uid=%d\n", os.Getuid())
	c, err := Dial(ctx, sock, WithName("child-"+mode))
	if err != nil {
		var en syscall.Errno
		errors.As(err, &en)
		fmt.Printf("dial-err errno=%d %v\n", int(en), err)
		return 0
	}
	pd, err := c.AllocPD(ctx, 0)
	if err != nil {
		fmt.Printf("err %v\n", err)
		return 1
	}
	mr, err := c.RegisterMemory(ctx, pd, 1<<20)
	if err != nil {
		fmt.Printf("err %v\n", err)
		return 1
	}
	vi, err := c.AllocVI(ctx, AllocVIRequest{PD: pd, MemReg: mr.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
	if err != nil {
		fmt.Printf("err %v\n", err)
		return 1
	}
	switch mode {
	case "hold":
		if _, err := c.FilterAdd(ctx, vi.ID, "udp:10.0.0.2:5000", 0); err != nil {
			fmt.Printf("err %v\n", err)
			return 1
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin) // until killed
		return 0
	case "probe":
		rc, _ := vi.File.SyscallConn()
		rc.Control(func(fd uintptr) {
			_, err := unix.GetsockoptInt(int(fd), unix.SOL_XDP, unix.XDP_OPTIONS)
			fmt.Printf("passed-xsk getsockopt err=%v\n", err)
		})
		fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		fmt.Printf("own-xsk err=%v\n", err)
		c.Close()
		return 0
	}
	return 2
}

func startChild(t *testing.T, exe, mode, sock string, cred *syscall.Credential) (*exec.Cmd, *bufio.Scanner, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envChild+"="+mode, envSock+"="+sock)
	cmd.Stderr = os.Stderr
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewScanner(out), in
}

func readLines(sc *bufio.Scanner, until string) []string {
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if sc.Text() == until {
			break
		}
	}
	return lines
}

func TestKilledClientIsFreed(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, nil)
	cmd, sc, _ := startChild(t, exe, "hold", ts.path, nil)
	lines := readLines(sc, "ready")
	if len(lines) == 0 || lines[len(lines)-1] != "ready" {
		t.Fatalf("child output %q", lines)
	}
	s := nextSession(t, ts.fact)
	if s.peer.PID != int32(cmd.Process.Pid) {
		t.Errorf("peer pid %d, child pid %d", s.peer.PID, cmd.Process.Pid)
	}
	if s.held() != 4 {
		t.Fatalf("session holds %d resources before kill, want 4", s.held())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waitClosed(t, s)
	if s.held() != 0 {
		t.Fatalf("session holds %d resources after the client was killed", s.held())
	}
	ts.stop()
	if n := s.closes.Load(); n != 1 {
		t.Fatalf("Close called %d times", n)
	}
}

// TestUnprivilegedPeer runs the client as uid/gid 65534 with no capabilities:
// the server must see that uid, an Authorizer must be able to reject it, and
// the passed AF_XDP socket must be usable though the child cannot create one.
func TestUnprivilegedPeer(t *testing.T) {
	testnet.RequireRoot(t)
	const nobody = testnet.Nobody
	// The child must reach the binary and the socket: both live in the
	// world-traversable directory UnprivilegedCommand makes.
	probe, dir := testnet.UnprivilegedCommand(t)
	bin, cred := probe.Path, probe.SysProcAttr.Credential
	chown := func(p string) error { return os.Chown(p, nobody, nobody) }

	run := func(auth Authorizer) (*fakeFactory, []string, int) {
		fact := newFakeFactory()
		fact.viFD = func() (int, int, error) { // a real AF_XDP socket, created with the agent's privileges
			fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
			return -1, fd, err
		}
		path := filepath.Join(dir, fmt.Sprintf("vi%d.sock", time.Now().UnixNano()%1e6))
		srv, err := Listen(Config{Path: path, Sessions: fact, Authorizer: auth, Chown: chown, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx) }()
		cmd, sc, _ := startChild(t, bin, "probe", path, cred)
		lines := readLines(sc, "")
		cmd.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		t.Logf("child: %q", lines)
		return fact, lines, cmd.Process.Pid
	}

	fact, lines, _ := run(AllowUIDs(0))
	if !containsLine(lines, "uid=65534") || !containsPrefix(lines, fmt.Sprintf("dial-err errno=%d", int(syscall.EPERM))) {
		t.Fatalf("rejected child said %q, want uid=65534 and EPERM", lines)
	}
	if fact.count() != 0 {
		t.Fatal("session created for a rejected uid")
	}

	fact, lines, pid := run(AllowUIDs(nobody))
	if fact.count() != 1 {
		t.Fatalf("%d sessions", fact.count())
	}
	s := fact.sessions[0]
	if s.peer.UID != nobody || s.peer.GID != nobody || s.peer.PID != int32(pid) {
		t.Fatalf("server saw peer %v, want uid/gid %d pid %d", s.peer, nobody, pid)
	}
	if !containsLine(lines, "passed-xsk getsockopt err=<nil>") {
		t.Errorf("child could not use the passed XSK: %q", lines)
	}
	if !containsLine(lines, "own-xsk err="+syscall.EPERM.Error()) {
		t.Errorf("child created its own AF_XDP socket (it should lack CAP_NET_RAW): %q", lines)
	}
	if s.closes.Load() != 1 {
		t.Fatalf("Close called %d times", s.closes.Load())
	}
}

func containsLine(lines []string, l string) bool {
	for _, x := range lines {
		if x == l {
			return true
		}
	}
	return false
}

func containsPrefix(lines []string, p string) bool {
	for _, x := range lines {
		if strings.HasPrefix(x, p) {
			return true
		}
	}
	return false
}
