package softvi

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
)

func TestOnePort(t *testing.T) {
	if p, err := onePort([]string{"eth1-vi0", "eth1-vi7"}); err != nil || p != "eth1" {
		t.Fatalf("onePort = %q, %v", p, err)
	}
	for _, bad := range [][]string{nil, {"eth1-vi0", "eth2-vi0"}, {"eth1"}} {
		if _, err := onePort(bad); err == nil {
			t.Errorf("onePort(%q) accepted", bad)
		}
	}
}

func TestKubepodsPeer(t *testing.T) {
	root := t.TempDir()
	write := func(pid, cg string) {
		if err := os.MkdirAll(filepath.Join(root, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(cg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("10", "12:memory:/kubepods/besteffort/pod1234/abcd\n")
	write("11", "0::/user.slice/session-1.scope\n")
	k := KubepodsPeer{ProcRoot: root}
	if err := k.Authorize(context.Background(), broker.Peer{PID: 10}); err != nil {
		t.Fatalf("pod peer refused: %v", err)
	}
	for _, pid := range []int32{0, 11, 12} {
		if err := k.Authorize(context.Background(), broker.Peer{PID: pid, UID: 1000}); err == nil {
			t.Errorf("peer pid %d accepted", pid)
		}
	}
	k.HostUIDs = []uint32{1000}
	if err := k.Authorize(context.Background(), broker.Peer{PID: 11, UID: 1000}); err != nil {
		t.Errorf("host uid 1000 refused though allowed: %v", err)
	}
}

// TestBackendServesAllocations runs the backend the way the agent does, on a
// real port: the pool's data plane opens, an allocation's socket is served
// and hands out a working VI, Release frees it, and Close leaves pins for
// the next agent.
func TestBackendServesAllocations(t *testing.T) {
	topo := bench.NewTopology(t)
	dir, err := os.MkdirTemp("", "efsv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bpf := filepath.Join(dataplane.DefaultBPFFS, "efvt-softvi-"+filepath.Base(dir))
	newBackend := func() *Backend {
		b := New(Config{BPFRoot: bpf, Authorizer: broker.AllowAny()})
		b.UseDirs(filepath.Join(dir, "run"), filepath.Join(dir, "state"))
		return b
	}
	b := newBackend()
	t.Cleanup(func() {
		b.Close()
		if p, err := dataplane.Open(context.Background(), dataplane.PortConfig{Ifname: topo.Port.Name, PinDir: filepath.Join(bpf, topo.Port.Name), VethPrefix: "x"}); err == nil {
			p.Destroy()
		}
		os.RemoveAll(bpf)
	})
	pool := config.Pool{Name: "fast", Backend: config.Software}
	port := discovery.Port{Name: topo.Port.Name}
	b.OnPoolPorts(pool, []discovery.Port{port})
	if !b.Healthy("fast", port) {
		t.Fatal("port unhealthy after OnPoolPorts")
	}
	ctx := context.Background()
	req := deviceplugin.PrepareRequest{Pool: "fast", Resource: "efvi.io/fast", AllocationID: "a1", Devices: []string{topo.Port.Name + "-vi2"}}
	m, err := b.Prepare(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(m.HostPath, SocketName)
	c, err := broker.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.Hello(); h.IfName != topo.Port.Name || h.Pool != "fast" || len(h.Devices) != 1 {
		t.Fatalf("hello %+v", h)
	}
	pd, err := c.AllocPD(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := c.RegisterMemory(ctx, pd, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.File.Close()
	vi, err := c.AllocVI(ctx, broker.AllocVIRequest{PD: pd, MemReg: mem.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer vi.File.Close()
	if vi.ID != 3 {
		t.Fatalf("VI id %d, want 3 (slot 2 + 1)", vi.ID)
	}
	if _, a, ok := b.Registry().ByDevice(topo.Port.Name + "-vi2"); !ok || a == nil {
		t.Fatal("allocation not in the registry")
	}
	// A second allocation of the same device is refused.
	if _, err := b.Prepare(ctx, deviceplugin.PrepareRequest{Pool: "fast", AllocationID: "a2", Devices: req.Devices}); err == nil || !strings.Contains(err.Error(), "already held") {
		t.Fatalf("double allocation: %v", err)
	}
	c.Close()
	if err := b.Release(ctx, "fast", "a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket still there after Release: %v", err)
	}
	// Close detaches; a new backend re-adopts the pinned data plane.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = newBackend()
	if _, err := b.Prepare(ctx, req); err != nil {
		t.Fatalf("prepare after restart: %v", err)
	}
	if !b.Healthy("fast", port) {
		t.Fatal("port unhealthy after restart")
	}
}
