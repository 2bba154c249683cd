package softvi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
	"github.com/kube-efvi/kube-efvi/pkg/kubeletcheckpoint"
)

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
	const owner = "0b9f6c1e-1111-4a4a-9c9c-000000000001"
	const other = "0b9f6c1e-1111-4a4a-9c9c-000000000002"
	// The owner's processes, as the cgroupfs and systemd drivers name them
	// (cgroup v1 lists every hierarchy, v2 one line).
	write("10", "12:memory:/kubepods/besteffort/pod"+owner+"/abcd\n11:pids:/kubepods/besteffort/pod"+owner+"/abcd\n")
	write("13", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+strings.ReplaceAll(owner, "-", "_")+".slice/cri-containerd-ab12.scope\n")
	write("14", "0::/kubepods.slice/kubepods-pod"+strings.ReplaceAll(owner, "-", "_")+".slice/cri-containerd-cd34.scope\n")
	// Others: a host process, another pod, a cgroup naming two pods.
	write("11", "0::/user.slice/session-1.scope\n")
	write("15", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+strings.ReplaceAll(other, "-", "_")+".slice/cri-containerd-ef.scope\n")
	write("16", "1:memory:/kubepods/pod"+owner+"/x\n2:pids:/kubepods/pod"+other+"/x\n")

	type refusal struct {
		pid   int32
		owner string
	}
	var refused []refusal
	k := KubepodsPeer{ProcRoot: root,
		PodUID: func(context.Context) (string, error) { return owner, nil },
		Refused: func(_ context.Context, p broker.Peer, o string, _ error) {
			refused = append(refused, refusal{p.PID, o})
		},
	}
	for _, pid := range []int32{10, 13, 14} {
		if err := k.Authorize(context.Background(), broker.Peer{PID: pid}); err != nil {
			t.Errorf("the owning pod's pid %d refused: %v", pid, err)
		}
	}
	for _, pid := range []int32{0, 11, 12, 15, 16} {
		err := k.Authorize(context.Background(), broker.Peer{PID: pid, UID: 1000})
		var be *broker.Error
		if !errors.As(err, &be) || be.Errno != syscall.EPERM {
			t.Errorf("peer pid %d: %v, want EPERM", pid, err)
		}
	}
	if err := k.Authorize(context.Background(), broker.Peer{PID: 15}); err == nil || !strings.Contains(err.Error(), other) || !strings.Contains(err.Error(), owner) {
		t.Errorf("another pod's refusal does not name both pods: %v", err)
	}
	if len(refused) != 6 || refused[3] != (refusal{15, owner}) || refused[1] != (refusal{11, ""}) {
		t.Errorf("refusals reported %+v", refused)
	}
	// The owner unknown: refused, whatever the peer.
	k.PodUID = func(context.Context) (string, error) { return "", errors.New("no checkpoint") }
	if err := k.Authorize(context.Background(), broker.Peer{PID: 10}); err == nil {
		t.Error("a peer accepted with the allocation's pod unknown")
	}
	k.HostUIDs = []uint32{1000}
	if err := k.Authorize(context.Background(), broker.Peer{PID: 11, UID: 1000}); err != nil {
		t.Errorf("host uid 1000 refused though allowed: %v", err)
	}
}

func TestCheckpointOwner(t *testing.T) {
	p := filepath.Join(t.TempDir(), kubeletcheckpoint.FileName)
	b, err := kubeletcheckpoint.Marshal([]kubeletcheckpoint.Entry{
		{PodUID: "AAAA-1", ContainerName: "c", ResourceName: "efvi.io/p", DeviceIDs: []string{"e-vi0", "e-vi1"}},
		{PodUID: "bbbb-2", ContainerName: "c", ResourceName: "efvi.io/p", DeviceIDs: []string{"e-vi2"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if uid, err := CheckpointOwner(p, "efvi.io/p", []string{"e-vi0", "e-vi1"}); err != nil || uid != "aaaa-1" {
		t.Fatalf("owner %q %v", uid, err)
	}
	for _, devs := range [][]string{{"e-vi0", "e-vi2"}, {"e-vi3"}, nil} {
		if uid, err := CheckpointOwner(p, "efvi.io/p", devs); err == nil {
			t.Errorf("devices %v: owner %q", devs, uid)
		}
	}
	if _, err := CheckpointOwner(p, "efvi.io/other", []string{"e-vi0"}); err == nil {
		t.Error("owner found under another resource")
	}
}

// TestBrokerRefusesOtherPeers: a real socket, a real peer (this test, which
// runs in no pod): the broker answers EPERM and reports it.
func TestBrokerRefusesOtherPeers(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	refused := make(chan error, 1)
	srv, err := broker.Listen(broker.Config{Path: path, Mode: 0o666,
		Sessions: broker.SessionFactoryFunc(func(context.Context, broker.Peer) (broker.Session, error) {
			return nil, errors.New("an authorized peer must not get here")
		}),
		Authorizer: KubepodsPeer{ProcRoot: "/proc",
			PodUID:  func(context.Context) (string, error) { return "0b9f6c1e-1111-4a4a-9c9c-000000000001", nil },
			Refused: func(_ context.Context, _ broker.Peer, _ string, err error) { refused <- err }}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); srv.Close(); <-done }()
	_, err = broker.Dial(ctx, path)
	var be *broker.Error
	if !errors.As(err, &be) || be.Errno != syscall.EPERM {
		t.Fatalf("dial from outside the pod: %v, want EPERM", err)
	}
	select {
	case err := <-refused:
		if !strings.Contains(err.Error(), "not in a Kubernetes pod") {
			t.Fatalf("refusal %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("refusal not reported (10 s hang guard)")
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
