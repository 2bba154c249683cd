package viservice_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

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
	n := newNode(t)
	n.alloc.Limits = viservice.Limits{MaxMemory: 64 << 20, Setting: "pools[0].limits"}
	var reported []string
	n.alloc.SetLimitReporter(func(msg string) { reported = append(reported, msg) })

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
	if len(reported) != 2 {
		t.Errorf("limit reports %q, want one per refused round", reported)
	}
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

func startAttacker(t *testing.T, n *node, mib, rounds int) *child {
	t.Helper()
	cmd, _ := testnet.UnprivilegedCommand(t)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d", attackEnv, mib, rounds), "EFVI_SOCKET="+n.sock)
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
