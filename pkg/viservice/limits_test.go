package viservice_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

const attackEnv = "VISERVICE_TEST_ATTACK"

// attackMain is a misbehaving pod: per round it connects, registers MiB of
// memory, allocates a VI on it, keeps both fds and says BYE. It prints one
// line per round ("OK n" or "ERR n errno message") and then waits on stdin
// with every fd still open.
func attackMain(arg string) error {
	mib, rounds, _ := strings.Cut(arg, ",")
	size, err := strconv.Atoi(mib)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(rounds)
	if err != nil {
		return err
	}
	if os.Getenv("VISERVICE_TEST_ATTACK_WAIT") != "" {
		fmt.Println("WAITING")
		bufio.NewScanner(os.Stdin).Scan() // moved into its cgroup meanwhile
	}
	ctx := context.Background()
	var keep []*os.File
	for i := 1; i <= n; i++ {
		err := func() error {
			c, err := broker.Dial(ctx, os.Getenv("EFVI_SOCKET"))
			if err != nil {
				return err
			}
			defer c.Close() // BYE
			pd, err := c.AllocPD(ctx, 0)
			if err != nil {
				return err
			}
			mem, err := c.RegisterMemory(ctx, pd, uint64(size)<<20)
			if err != nil {
				return err
			}
			keep = append(keep, mem.File)
			if os.Getenv("VISERVICE_TEST_ATTACK_PUNCH") != "" {
				// Give a page back: the agent would allocate it when pinning.
				if err := unix.Fallocate(int(mem.File.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
					return err
				}
			}
			vi, err := c.AllocVI(ctx, broker.AllocVIRequest{PD: pd, MemReg: mem.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
			if err != nil {
				return err
			}
			keep = append(keep, vi.File)
			return nil
		}()
		if err != nil {
			var be *broker.Error
			errno := syscall.Errno(0)
			if errors.As(err, &be) {
				errno = be.Errno
			}
			fmt.Printf("ERR %d %d %v\n", i, int(errno), err)
		} else {
			fmt.Printf("OK %d\n", i)
		}
	}
	fmt.Println("DONE")
	bufio.NewScanner(os.Stdin).Scan()
	_ = keep
	return nil
}

// TestPinnedMemoryLimitSurvivesBye is the attack of issue 19 on the real
// data plane, with the attacker in its own unprivileged process: connect,
// register memory, allocate a VI, keep the fds, BYE, again. The agent keeps
// counting each VI's pinned memory after BYE while the attacker holds the
// socket, refuses the round that would exceed the allocation's limit with
// ENOMEM naming the config field, and frees the budget once the attacker's
// fds are really closed.
func TestPinnedMemoryLimitSurvivesBye(t *testing.T) {
	var mu sync.Mutex
	var reported []string
	n := newNode(t, func(a *viservice.Allocation) {
		a.Limits = viservice.Limits{MaxMemory: 64 << 20, Setting: "pools[0].limits"}
		a.SetLimitReporter(func(msg string) {
			mu.Lock()
			defer mu.Unlock()
			reported = append(reported, msg)
		})
	})

	attack := startAttacker(t, n, 16, 6)
	for i := 1; i <= 4; i++ {
		attack.expect(fmt.Sprintf("OK %d", i))
	}
	for i := 5; i <= 6; i++ {
		line := attack.expect(fmt.Sprintf("ERR %d %d ", i, int(syscall.ENOMEM)))
		if !strings.Contains(line, "pools[0].limits.pinnedMemory") {
			t.Errorf("over-limit error does not name the config field: %s", line)
		}
	}
	attack.expect("DONE")
	u := n.alloc.Usage()
	t.Logf("usage while the attacker holds its fds: %v", u)
	if u.PinnedBytes != 64<<20 || u.VIs != 4 {
		t.Errorf("usage %v, want 64 MiB pinned by 4 VIs the attacker still holds", u)
	}
	mu.Lock()
	if len(reported) != 2 {
		t.Errorf("limit reports %q, want one per refused round", reported)
	}
	mu.Unlock()
	// The attacker exits: its sockets are closed by every holder, so the
	// kernel frees them and the budget comes back.
	_ = attack.cmd.Process.Kill()
	_ = attack.cmd.Wait()
	waitFor(t, "the attacker's VIs to be uncounted", func() bool { return n.alloc.Usage().VIs == 0 })
	if u := n.alloc.Usage(); u.PinnedBytes != 0 {
		t.Errorf("after the attacker exited: %v", u)
	}
	again := startAttacker(t, n, 16, 4)
	for i := 1; i <= 4; i++ {
		again.expect(fmt.Sprintf("OK %d", i))
	}
}

func startAttacker(t *testing.T, n *node, mib, rounds int, env ...string) *child {
	t.Helper()
	cmd, _ := testnet.UnprivilegedCommand(t)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d", attackEnv, mib, rounds), "EFVI_SOCKET="+n.sock)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = &testWriter{t: t}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

// memcg is a cgroup v1 memory cgroup made for a test.
type memcg string

const memcgRoot = "/sys/fs/cgroup/memory"

func newMemcg(t *testing.T, name string) memcg {
	t.Helper()
	if _, err := os.Stat(filepath.Join(memcgRoot, "memory.usage_in_bytes")); err != nil {
		t.Skipf("no cgroup v1 memory controller at %s (%v): this test reads v1 memory.usage_in_bytes", memcgRoot, err)
	}
	dir := filepath.Join(memcgRoot, fmt.Sprintf("efvi-test-%s-%s", name, randHex(4)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot create a memory cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Empty by now (tasks moved back or exited); charges go to the parent.
		for range 50 {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("memory cgroup %s left behind", dir)
	})
	return memcg(dir)
}

func (m memcg) add(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(string(m), "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatalf("move pid %d into %s: %v", pid, m, err)
	}
}

func (m memcg) usage(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(string(m), "memory.usage_in_bytes"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// ownMemcg returns the calling process's cgroup v1 memory cgroup directory.
func ownMemcg(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && f[1] == "memory" {
			return filepath.Join(memcgRoot, f[2])
		}
	}
	t.Skip("not in a cgroup v1 memory cgroup")
	return ""
}

// TestUMEMChargedToPod: the pages a VI pins are charged to the memory
// cgroup of the pod that registered them, not the agent's. The agent (this
// test process) and the pod (the attacker child) each run in a memory cgroup
// of their own; the pod registers 64 MiB and allocates a VI on it.
func TestUMEMChargedToPod(t *testing.T) {
	n := newNode(t)
	home := ownMemcg(t)
	agentCg, podCg := newMemcg(t, "agent"), newMemcg(t, "pod")
	agentCg.add(t, os.Getpid())
	defer memcg(home).add(t, os.Getpid())
	pod := startAttacker(t, n, 64, 1, "VISERVICE_TEST_ATTACK_WAIT=1")
	pod.expect("WAITING")
	podCg.add(t, pod.cmd.Process.Pid)
	a0, p0 := agentCg.usage(t), podCg.usage(t)
	pod.send("GO")
	pod.expect("OK 1")
	pod.expect("DONE")
	if u := n.alloc.Usage(); u.PinnedBytes != 64<<20 || u.VIs != 1 {
		t.Fatalf("usage %v, want the pod's 64 MiB VI", u)
	}
	da, dp := agentCg.usage(t)-a0, podCg.usage(t)-p0
	t.Logf("charged while the pod holds a 64 MiB VI: agent cgroup %+d KiB, pod cgroup %+d KiB", da>>10, dp>>10)
	if dp < 60<<20 {
		t.Errorf("pod cgroup grew by %d KiB, want the 64 MiB UMEM charged to the pod", dp>>10)
	}
	if da > 16<<20 {
		t.Errorf("agent cgroup grew by %d KiB: the pod's UMEM was charged to the agent", da>>10)
	}
	_ = pod.cmd.Process.Kill()
	_ = pod.cmd.Wait()
}

// TestUnpopulatedRegionRefused: ALLOC_VI on a region with pages the client
// has not allocated is EINVAL (the agent's pinning would allocate, and be
// charged for, them), and nothing stays counted.
func TestUnpopulatedRegionRefused(t *testing.T) {
	n := newNode(t)
	c := startAttacker(t, n, 4, 1, "VISERVICE_TEST_ATTACK_PUNCH=1")
	line := c.expect(fmt.Sprintf("ERR 1 %d ", int(syscall.EINVAL)))
	if !strings.Contains(line, "populated") {
		t.Errorf("error does not say why: %s", line)
	}
	c.expect("DONE")
	waitFor(t, "the session to end", func() bool { return n.alloc.Usage() == viservice.Usage{} })
}
