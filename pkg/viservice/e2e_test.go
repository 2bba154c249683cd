package viservice_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// node is the agent side of a test: a port in the root namespace with the
// data plane on it, one allocation, and its broker socket.
type node struct {
	t       *testing.T
	topo    *bench.Topology
	pinDir  string
	prefix  string
	plane   *dataplane.Port
	port    *viservice.Port
	alloc   *viservice.Allocation
	srv     *broker.Server
	sock    string
	state   string
	cancel  context.CancelFunc
	served  chan error
	wireMAC net.HardwareAddr
	// configure adjusts each allocation before its broker serves, so that
	// settings are in place before any session (in another process) reads
	// them.
	configure []func(*viservice.Allocation)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newNode(t *testing.T, configure ...func(*viservice.Allocation)) *node {
	t.Helper()
	topo := bench.NewTopology(t)
	topo.PrepareDataPlane(t)
	dir, err := os.MkdirTemp("", "efvs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := &node{
		t: t, topo: topo,
		pinDir:  filepath.Join(dataplane.DefaultBPFFS, "efvt-"+randHex(4)),
		prefix:  "ev" + randHex(2),
		sock:    filepath.Join(dir, "broker.sock"),
		state:   filepath.Join(dir, "filters.json"),
		wireMAC: topo.Wire.MAC,

		configure: configure,
	}
	n.start()
	t.Cleanup(func() {
		n.stop()
		if n.plane != nil {
			if err := n.plane.Destroy(); err != nil {
				t.Errorf("destroy data plane: %v", err)
			}
		}
	})
	return n
}

// start opens (or re-adopts) the data plane and serves the allocation.
func (n *node) start() {
	t := n.t
	t.Helper()
	plane, err := dataplane.Open(context.Background(), dataplane.PortConfig{
		Ifname: n.topo.Port.Name, PinDir: n.pinDir, VethPrefix: n.prefix, Logger: slog.Default(),
	})
	if err != nil {
		t.Fatalf("open data plane: %v", err)
	}
	n.plane = plane
	n.port, err = viservice.NewPort(n.topo.Port.Name, n.topo.Port.MAC, 1500, plane)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.port.Persist(n.state); err != nil {
		t.Fatal(err)
	}
	n.alloc, err = viservice.NewAllocation("testpool", n.port, []string{n.topo.Port.Name + "-vi3"}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := n.alloc.SetPolicy(filter.Policy{OwnIPs: []netip.Addr{n.topo.PortIP}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range n.configure {
		c(n.alloc)
	}
	n.srv, err = broker.Listen(broker.Config{
		Path: n.sock, Mode: 0o660, Sessions: n.alloc, Authorizer: broker.AllowUIDs(65534),
		Chown: func(p string) error { return os.Chown(p, 65534, 65534) },
	})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.served = make(chan error, 1)
	go func() { n.served <- n.srv.Serve(ctx) }()
}

// stop ends the broker; detach leaves VIs in place as an exiting agent does.
func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.srv.Close()
	if err := <-n.served; err != nil && !errors.Is(err, context.Canceled) {
		n.t.Errorf("serve: %v", err)
	}
	n.cancel = nil
}

// restart simulates an agent restart: sessions detach, handles close, and
// a new data plane and broker take over from the pins and the state file.
func (n *node) restart() {
	n.alloc.Detach()
	n.stop()
	if err := n.plane.Close(); err != nil {
		n.t.Fatalf("close data plane: %v", err)
	}
	n.plane = nil
	n.start()
}

// child is the unprivileged pod process.
type child struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	lines []string
}

func startChild(t *testing.T, n *node, env ...string) *child {
	t.Helper()
	cmd, _ := testnet.UnprivilegedCommand(t)
	cmd.Env = append(os.Environ(), childEnv+"=1", "EFVI_SOCKET="+n.sock,
		"TEST_PEER_MAC="+n.wireMAC.String(), "TEST_FABRIC_IP="+n.topo.FabricIP.String())
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

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("child: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// expect reads the child's next line and checks its prefix.
func (c *child) expect(prefix string) string {
	c.t.Helper()
	done := make(chan bool, 1)
	timer := time.AfterFunc(30*time.Second, func() {
		select {
		case <-done:
		default:
			_ = c.cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	ok := c.out.Scan()
	done <- true
	if !ok {
		c.t.Fatalf("child ended while the test waited for %q (lines so far: %q)", prefix, c.lines)
	}
	line := c.out.Text()
	c.lines = append(c.lines, line)
	if !strings.HasPrefix(line, prefix) {
		c.t.Fatalf("child said %q, want %q...", line, prefix)
	}
	return line
}

func (c *child) send(cmd string) {
	c.t.Helper()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		c.t.Fatalf("tell child %q: %v", cmd, err)
	}
}

// fabricSocket opens a UDP socket in the fabric namespace.
func fabricSocket(t *testing.T, n *node, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := n.topo.Fabric.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: n.topo.FabricIP.AsSlice(), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func kernelSocket(t *testing.T, ip netip.Addr, port int) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip.AsSlice(), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendFromFabric sends count datagrams "<tag>-<i>" to the port's IP.
func sendFromFabric(t *testing.T, from *net.UDPConn, to netip.AddrPort, tag string, count int) {
	t.Helper()
	for i := 0; i < count; i++ {
		if _, err := from.WriteToUDPAddrPort([]byte(fmt.Sprintf("%s-%d", tag, i)), to); err != nil {
			t.Fatal(err)
		}
	}
}

// barrier sends one datagram to an unfiltered port and waits for the kernel
// to deliver it: everything sent before it on the same path has been handled.
func barrier(t *testing.T, n *node, from *net.UDPConn) {
	t.Helper()
	k := kernelSocket(t, n.topo.PortIP, 0)
	to := netip.AddrPortFrom(n.topo.PortIP, uint16(k.LocalAddr().(*net.UDPAddr).Port))
	sendFromFabric(t, from, to, "barrier", 1)
	_ = k.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	if _, _, err := k.ReadFromUDP(buf); err != nil {
		t.Fatalf("barrier datagram did not reach the kernel: %v", err)
	}
	k.Close()
}

func expectNothing(t *testing.T, c *net.UDPConn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	if n, _, err := c.ReadFromUDP(buf); err == nil {
		t.Fatalf("%s received %q", what, buf[:n])
	}
}

// TestUnprivilegedPodUsesVI is the software VI end to end: an agent-side
// data plane and broker, and a pod-side process with uid 65534 and no
// capabilities that allocates a VI through the broker, steals a UDP flow,
// answers through the VI, cannot spoof, and whose exit frees everything.
func TestUnprivilegedPodUsesVI(t *testing.T) {
	n := newNode(t)
	fab := fabricSocket(t, n, 6001)
	kern := kernelSocket(t, n.topo.PortIP, 5000)
	c := startChild(t, n)
	c.expect("READY")

	// Steal: the flow reaches the VI and not the kernel socket on the port.
	sendFromFabric(t, fab, netip.AddrPortFrom(n.topo.PortIP, 5000), "ping", 50)
	barrier(t, n, fab)
	c.send("RECV 50")
	c.expect("GOT 50")
	expectNothing(t, kern, "kernel socket bound to the stolen port")

	// TX through the VI reaches the fabric; the spoofed frame does not.
	c.send("ECHO")
	c.expect("SENT 50")
	buf := make([]byte, 128)
	for i := 0; i < 50; i++ {
		_ = fab.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, from, err := fab.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("echo %d: %v", i, err)
		}
		if got, want := string(buf[:m]), fmt.Sprintf("echo-ping-%d", i); got != want {
			t.Fatalf("echo %d = %q from %v, want %q", i, got, from, want)
		}
		if from.Addr() != n.topo.PortIP || from.Port() != 5000 {
			t.Fatalf("echo from %v, want %v:5000", from, n.topo.PortIP)
		}
	}
	expectNothing(t, fab, "fabric (spoofed frame)")
	cnt, err := n.plane.VICounters(3)
	if err != nil {
		t.Fatal(err)
	}
	if cnt.TxSpoofDrops != 1 || cnt.TxPackets != 50 || cnt.RxPackets != 50 {
		t.Fatalf("VI counters %+v: want 50 rx, 50 tx, 1 spoof drop", cnt)
	}
	c.send("STATS")
	line := c.expect("STATS")
	for _, want := range []string{"rx_packets=50", "tx_spoof_drops=1", "tx_packets=50"} {
		if !strings.Contains(line, want) {
			t.Errorf("child stats %q lack %s", line, want)
		}
	}
	if len(n.port.Filters()) != 1 {
		t.Fatalf("port filters %v, want the child's one", n.port.Filters())
	}

	// The pod exits: its session frees the VI and its filter.
	c.send("EXIT")
	c.expect("BYE")
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
	waitFor(t, "VI freed after the pod exited", func() bool { return len(n.plane.VIs()) == 0 })
	if f := n.port.Filters(); len(f) != 0 {
		t.Fatalf("filters left after the pod exited: %v", f)
	}
	sendFromFabric(t, fab, netip.AddrPortFrom(n.topo.PortIP, 5000), "after", 1)
	_ = kern.SetReadDeadline(time.Now().Add(10 * time.Second))
	if m, _, err := kern.ReadFromUDP(buf); err != nil || string(buf[:m]) != "after-0" {
		t.Fatalf("after the VI was freed the kernel got %q, %v; want after-0", buf[:m], err)
	}
}

// TestAgentRestartKeepsVIFlowing restarts the agent side under a running
// pod: the VI keeps receiving, and the new agent knows its filter.
func TestAgentRestartKeepsVIFlowing(t *testing.T) {
	n := newNode(t)
	fab := fabricSocket(t, n, 6001)
	c := startChild(t, n)
	c.expect("READY")
	to := netip.AddrPortFrom(n.topo.PortIP, 5000)
	sendFromFabric(t, fab, to, "before", 10)
	c.send("RECV 10")
	c.expect("GOT 10")

	n.restart()

	sendFromFabric(t, fab, to, "after", 10)
	c.send("RECV 10")
	c.expect("GOT 10")
	if f := n.port.Filters(); len(f) != 1 || f[0].Owner != 3 {
		t.Fatalf("restarted agent's filter table %v, want the pod's filter on VI 3", f)
	}
	if vis := n.plane.VIs(); len(vis) != 1 || vis[0] != 3 {
		t.Fatalf("restarted agent's VIs %v, want [3]", vis)
	}
	c.send("EXIT")
	c.expect("BYE")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAttachmentLifecycle drives the CNI side: filters installed for a pod's
// slot before the pod opens its VI steer traffic to the slot, CHECK notices a
// filter removed behind its back, DEL is idempotent and frees the slot.
func TestAttachmentLifecycle(t *testing.T) {
	n := newNode(t)
	fab := fabricSocket(t, n, 6001)
	kern := kernelSocket(t, n.topo.PortIP, 5000)
	spec, err := filter.Parse("udp:" + n.topo.PortIP.String() + ":5000")
	if err != nil {
		t.Fatal(err)
	}
	const key = "ctr1/eth0"
	if _, err := n.alloc.Attach(context.Background(), key, []filter.Spec{spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.alloc.Attach(context.Background(), key, []filter.Spec{spec}); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("second attach of the same key: %v, want EEXIST", err)
	}
	other, _ := filter.Parse("udp:10.9.9.9:5000")
	if _, err := n.alloc.Attach(context.Background(), "ctr2/eth0", []filter.Spec{other}); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("attach of another pod's IP: %v, want EPERM", err)
	}
	if err := n.port.CheckAttachment(key); err != nil {
		t.Fatalf("check: %v", err)
	}
	sendFromFabric(t, fab, netip.AddrPortFrom(n.topo.PortIP, 5000), "cni", 5)
	barrier(t, n, fab)
	expectNothing(t, kern, "kernel socket on the attached port")
	if c, err := n.plane.VICounters(3); err != nil || c.RxPackets != 5 {
		t.Fatalf("slot 3 counters %+v, %v: want 5 rx", c, err)
	}

	// Behind its back: the data plane loses the filter, CHECK must say so.
	if err := n.plane.RemoveFilter(dataplane.Handle{VI: 3, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if err := n.port.CheckAttachment(key); err == nil {
		t.Fatal("check passed with the filter gone from the data plane")
	}
	for i := 0; i < 2; i++ {
		if err := n.alloc.DetachFilters(key); err != nil {
			t.Fatalf("detach %d: %v", i, err)
		}
	}
	if vis := n.plane.VIs(); len(vis) != 0 {
		t.Fatalf("VIs %v left after DEL", vis)
	}
	if len(n.port.Filters()) != 0 || len(n.port.Attachments()) != 0 {
		t.Fatalf("table %v / attachments %v left after DEL", n.port.Filters(), n.port.Attachments())
	}
	sendFromFabric(t, fab, netip.AddrPortFrom(n.topo.PortIP, 5000), "after", 1)
	_ = kern.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	if m, _, err := kern.ReadFromUDP(buf); err != nil || string(buf[:m]) != "after-0" {
		t.Fatalf("after DEL the kernel got %q, %v; want after-0", buf[:m], err)
	}
}

// TestWarmSlotVIs: Warm prepares slot VIs with no allowed sources; a CNI
// attachment uses one; when it goes the VI is destroyed (revoking any socket
// still bound to it) and Retired lets a fresh one be prepared.
func TestWarmSlotVIs(t *testing.T) {
	n := newNode(t)
	var retired []uint32
	n.port.Retired = func(slot uint32) {
		retired = append(retired, slot)
		if _, err := n.port.Warm(context.Background(), []uint32{slot}); err != nil {
			t.Errorf("re-warm slot %d: %v", slot, err)
		}
	}
	if k, err := n.port.Warm(context.Background(), []uint32{2, 3}); err != nil || k != 2 {
		t.Fatalf("warm: %d, %v", k, err)
	}
	if k, _ := n.port.Warm(context.Background(), []uint32{2, 3}); k != 0 {
		t.Fatalf("warm twice created %d more", k)
	}
	old, _ := n.plane.VI(3)
	if _, ips := old.Sources(); len(ips) != 0 {
		t.Fatalf("a warm VI allows sources %v before any pod", ips)
	}
	spec, _ := filter.Parse("udp:" + n.topo.PortIP.String() + ":5000")
	if _, err := n.alloc.Attach(context.Background(), "c/eth0", []filter.Spec{spec}); err != nil {
		t.Fatal(err)
	}
	if v, _ := n.plane.VI(3); v != old {
		t.Fatal("attach did not use the warm VI")
	}
	if _, ips := old.Sources(); len(ips) != 1 || ips[0] != n.topo.PortIP {
		t.Fatalf("sources %v after attach, want the pod's IP", ips)
	}
	if err := n.alloc.DetachFilters("c/eth0"); err != nil {
		t.Fatal(err)
	}
	if len(retired) != 1 || retired[0] != 3 {
		t.Fatalf("retired %v, want [3]", retired)
	}
	fresh, ok := n.plane.VI(3)
	if !ok || fresh == old || fresh.PeerIfindex() == old.PeerIfindex() {
		t.Fatalf("slot 3 after DEL: %v (old %v): want a fresh VI", fresh, old)
	}
	if _, ips := fresh.Sources(); len(ips) != 0 {
		t.Fatalf("the fresh VI allows sources %v", ips)
	}
	if f := n.port.Filters(); len(f) != 0 {
		t.Fatalf("filters %v left after DEL", f)
	}
}
