package efvi_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
	"github.com/kube-efvi/kube-efvi/pkg/xsk/xsktest"
)

const childEnv = "EFVI_TEST_UNPRIV_CHILD"

type childParams struct {
	Geometry xsk.Geometry
	Flow     frame.UDPFlow // for the child's TX
}

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := unprivChild(); err != nil {
			fmt.Printf("FAIL %v\n", err)
			os.Exit(1)
		}
		fmt.Println("DONE")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// unprivChild runs as uid 65534 with no capabilities, with the VI's socket
// on fd 3 and its memfd on fd 4.
func unprivChild() error {
	var p childParams
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &p); err != nil {
		return err
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(status), "\n") {
		for _, c := range []string{"CapInh:", "CapPrm:", "CapEff:", "CapAmb:"} {
			if strings.HasPrefix(line, c) && strings.TrimSpace(strings.TrimPrefix(line, c)) != "0000000000000000" {
				return fmt.Errorf("child still has capabilities: %s", line)
			}
		}
	}
	if os.Getuid() != 65534 || os.Geteuid() != 65534 {
		return fmt.Errorf("child runs as uid %d", os.Getuid())
	}
	if fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); !errors.Is(err, unix.EPERM) {
		if err == nil {
			unix.Close(fd)
		}
		return fmt.Errorf("socket(AF_XDP) without privileges: %v, want EPERM", err)
	}
	if err := unix.Ftruncate(4, 1<<30); !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("ftruncate(memfd) grow: %v, want EPERM (sealed)", err)
	}
	if err := unix.Ftruncate(4, 4096); !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("ftruncate(memfd) shrink: %v, want EPERM (sealed)", err)
	}
	if err := unix.Bind(3, &unix.SockaddrXDP{Ifindex: 1}); err == nil {
		return errors.New("rebinding the socket succeeded")
	}
	vi, err := efvi.NewSoftwareVIFromFDs(3, 4, p.Geometry, efvi.Options{})
	if err != nil {
		return err
	}
	defer vi.Close()
	pool := efvi.NewBufPool(0, 64)
	if n := vi.RefillFrom(pool); n != 64 {
		return fmt.Errorf("posted %d buffers", n)
	}
	fmt.Println("READY")
	evs := make([]efvi.Event, 16)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		n := vi.EventQPoll(evs)
		if n == 0 {
			_ = vi.Wait(50 * time.Millisecond)
			continue
		}
		e := evs[0]
		if e.Type != efvi.EventRX {
			return fmt.Errorf("event %+v", e)
		}
		var pk frame.Packet
		f := vi.RxFrame(&e)
		if err := frame.Parse(f, &pk); err != nil {
			return err
		}
		fmt.Printf("RX %s id=%d\n", pk.Payload(f), e.RqID)
		// Answer from another buffer.
		i, _ := pool.Get()
		l, err := p.Flow.Build(vi.Memory().Buf(i), []byte("from-child"))
		if err != nil {
			return err
		}
		if err := vi.Transmit(vi.Memory().Addr(i), l, 77); err != nil {
			return err
		}
		ids := make([]efvi.RqID, efvi.TransmitBatch)
		for time.Now().Before(deadline) {
			n := vi.EventQPoll(evs)
			for _, e := range evs[:n] {
				if e.Type == efvi.EventTX {
					k := vi.TransmitUnbundle(&e, ids)
					fmt.Printf("TX ids=%v\n", ids[:k])
					return nil
				}
			}
		}
		return errors.New("no TX completion")
	}
	return errors.New("no RX event")
}

func TestUnprivilegedProcess(t *testing.T) {
	tp := xsktest.New(t)
	xskFD, memFD, g := agent(t, tp, agentCfg{})
	xskFile, memFile := os.NewFile(uintptr(xskFD), "xsk"), os.NewFile(uintptr(memFD), "mem")
	defer xskFile.Close()
	defer memFile.Close()
	u := tp.ListenUDP(t, 0)
	params, _ := json.Marshal(childParams{Geometry: g, Flow: flowTo(tp, u.Port)})

	cmd, _ := testnet.UnprivilegedCommand(t)
	cmd.Env = append(os.Environ(), childEnv+"="+string(params))
	cmd.ExtraFiles = []*os.File{xskFile, memFile} // fds 3 and 4
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The agent keeps nothing: drop our copies once the child has them.
	xskFile.Close()
	memFile.Close()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var out []string
	timeout := time.After(20 * time.Second)
	sent := false
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				done = true
				break
			}
			out = append(out, l)
			if l == "READY" && !sent {
				sent = true
				if err := tp.SendTo(u, 9000, []byte("to-child")); err != nil {
					t.Fatal(err)
				}
			}
		case <-timeout:
			_ = cmd.Process.Kill()
			t.Fatalf("child timed out; output %q", out)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v; output %q", err, out)
	}
	t.Logf("child output: %q", out)
	joined := strings.Join(out, "\n")
	if !strings.Contains(joined, "RX to-child id=") || !strings.Contains(joined, "TX ids=[77]") || !strings.HasSuffix(joined, "DONE") {
		t.Fatalf("child output %q", out)
	}
	buf := make([]byte, 100)
	n, from, err := u.Recv(buf, 5*time.Second)
	if err != nil || string(buf[:n]) != "from-child" || from != netip.AddrPortFrom(tp.PortIP, 7000) {
		t.Fatalf("fabric got %q from %v (%v), want from-child", buf[:n], from, err)
	}
}
