package agent

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/allocdir"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/kubelettest"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
	"github.com/kube-efvi/kube-efvi/pkg/discovery/sysfstest"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type fakePR struct {
	mu   sync.Mutex
	held []allocator.Held
}

func (f *fakePR) List(context.Context) ([]allocator.Held, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]allocator.Held(nil), f.held...), nil
}

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeConfig(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestAgentEndToEnd runs the whole agent against a fake sysfs tree,
// injected link events, a fake kubelet (registration + plugin client over
// real gRPC) and a fake PodResources lister.
func TestAgentEndToEnd(t *testing.T) {
	root := kubelettest.TempDir(t)
	pluginDir := filepath.Join(root, "dp")
	if err := os.Mkdir(pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	k := kubelettest.Start(t, pluginDir)
	tree := sysfstest.New(t)
	tree.Add(sysfstest.Port{Name: "eth1", Index: 3, MAC: "02:00:00:00:00:01", Driver: "virtio_net", PCIAddress: "0000:00:03.0", NUMANode: 0, Up: true})
	tree.Add(sysfstest.Port{Name: "eth2", Index: 4, MAC: "02:00:00:00:00:02", Driver: "virtio_net", PCIAddress: "0000:00:04.0", NUMANode: 1, Up: true})
	events := sysfstest.NewEvents()
	cfgPath := filepath.Join(t.TempDir(), "config.yaml")
	cfgBody := func(vis int) string {
		return strings.ReplaceAll(`
agent:
  pluginDir: `+pluginDir+`
  stateDir: `+filepath.Join(root, "state")+`
  brokerDir: `+filepath.Join(root, "run")+`
  metricsAddress: "127.0.0.1:0"
pools:
- name: fast
  backend: software
  selector: {interfaces: [eth1, eth2]}
  visPerPort: VIS
  policy: spread
- name: nic
  backend: hardware
`, "VIS", string(rune('0'+vis)))
	}
	writeConfig(t, cfgPath, cfgBody(2))
	logs := &syncBuf{}
	pr := &fakePR{}
	var hookMu sync.Mutex
	hooked := map[string]int{}
	a := New(Options{ConfigPath: cfgPath, SysfsRoot: tree.Root, DevFS: fstest.MapFS{}, Events: events,
		PodResources: pr, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Backends: map[config.Backend]Backend{config.Software: &dirBackend{Dirs: allocdir.Dirs{Root: filepath.Join(root, "run", "alloc")},
			onPorts: func(p config.Pool, ports []discovery.Port) {
				hookMu.Lock()
				hooked[p.Name] = len(ports)
				hookMu.Unlock()
			}}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}
	defer stop()

	// The steps share the agent and build on each other: a failed step ends
	// the test.
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	ctxT, cancelT := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancelT()
	var (
		regs   = map[string]string{}
		c      pluginapi.DevicePluginClient
		stream pluginapi.DevicePlugin_ListAndWatchClient
		host   string // the first allocation's broker dir
	)
	recv := func(t *testing.T) map[string]string {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, d := range r.Devices {
			m[d.ID] = d.Health
		}
		return m
	}

	step("both pools register, the hardware one empty", func(t *testing.T) {
		for range 2 {
			r := k.WaitRegistration()
			regs[r.Req.ResourceName] = r.Req.Endpoint
		}
		if regs["efvi.io/fast"] != "efvi-fast.sock" || regs["efvi.io/nic"] != "efvi-nic.sock" {
			t.Fatalf("registrations %v", regs)
		}
		nicStream, err := k.Client(regs["efvi.io/nic"]).ListAndWatch(ctxT, &pluginapi.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := nicStream.Recv(); err != nil || len(r.Devices) != 0 {
			t.Fatalf("hardware pool without Solarflare ports advertised %v, %v", r, err)
		}
		c = k.Client(regs["efvi.io/fast"])
		if stream, err = c.ListAndWatch(ctxT, &pluginapi.Empty{}); err != nil {
			t.Fatal(err)
		}
		if got := recv(t); len(got) != 4 || got["eth2-vi1"] != "Healthy" {
			t.Fatalf("initial devices %v", got)
		}
	})

	step("link down and up change health", func(t *testing.T) {
		// Announced by a (fake) netlink event.
		tree.SetLink("eth2", false)
		events.Fire()
		if got := recv(t); got["eth2-vi0"] != "Unhealthy" || got["eth1-vi0"] != "Healthy" {
			t.Fatalf("after eth2 down: %v", got)
		}
		tree.SetLink("eth2", true)
		events.Fire()
		if got := recv(t); got["eth2-vi0"] != "Healthy" {
			t.Fatalf("after eth2 up: %v", got)
		}
	})

	step("allocate makes a broker dir and a checkpoint", func(t *testing.T) {
		resp, err := c.Allocate(ctxT, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"eth1-vi1"}}}})
		if err != nil {
			t.Fatal(err)
		}
		host = resp.ContainerResponses[0].Mounts[0].HostPath
		if !strings.HasPrefix(host, filepath.Join(root, "run", "alloc", "fast")+"/") {
			t.Fatalf("broker dir %s", host)
		}
		if _, err := os.Stat(filepath.Join(host, "allocation.json")); err != nil {
			t.Fatalf("allocation record: %v", err)
		}
		// The checkpoint is written in the background, within milliseconds.
		ckpt := filepath.Join(root, "state", "allocations.json")
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			_, err := os.Stat(ckpt)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("checkpoint: %v", err)
			}
		}
	})

	step("a reload shrinks the pool and keeps the allocation", func(t *testing.T) {
		// eth1-vi1 is no longer offered but its allocation stays.
		writeConfig(t, cfgPath, cfgBody(1))
		if got := recv(t); len(got) != 2 || got["eth1-vi1"] != "" {
			t.Fatalf("after shrink: %v", got)
		}
		if n := len(a.alloc.Allocations()); n != 1 {
			t.Fatalf("allocations after shrink: %d", n)
		}
	})

	step("metrics over HTTP", func(t *testing.T) {
		addr := a.MetricsAddr(ctxT)
		res, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, want := range []string{
			`efvi_vis_capacity{pool="fast",port="eth1"} 1`,
			`efvi_vis_allocated{pool="fast",port="eth1"} 1`,
			`efvi_vis_healthy{pool="fast",port="eth2"} 1`,
			`efvi_pool_ports{pool="nic"} 0`,
			`efvi_kubelet_registrations_total{pool="fast",result="ok"}`,
			`efvi_allocations_total{pool="fast",result="ok"} 1`,
			`efvi_config_reloads_total{result="ok"} 1`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})

	step("a gone pod's slot is reclaimed, a live pod's is refused", func(t *testing.T) {
		// The pod is deleted: after grow-back the kubelet hands eth1-vi1 to a
		// new pod; PodResources no longer lists the old pod, so the reclaim
		// frees the old allocation and its broker dir.
		writeConfig(t, cfgPath, cfgBody(2))
		if got := recv(t); len(got) != 4 {
			t.Fatalf("after grow: %v", got)
		}
		_, err := c.Allocate(ctxT, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"eth1-vi1"}}}})
		if err != nil {
			t.Fatalf("re-allocation after the pod went away: %v", err)
		}
		if _, err := os.Stat(host); !os.IsNotExist(err) {
			t.Fatalf("old broker dir still there: %v", err)
		}
		// Now the kubelet reports the new pod holding it: a third request for
		// the same slot is refused.
		pr.mu.Lock()
		pr.held = []allocator.Held{{Resource: "efvi.io/fast", Device: "eth1-vi1", Owner: allocator.Owner{Namespace: "ns", Pod: "new", Container: "c"}}}
		pr.mu.Unlock()
		if _, err := c.Allocate(ctxT, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"eth1-vi1"}}}}); err == nil {
			t.Fatal("slot held by a live pod issued twice")
		}
	})

	step("pool hooks and status log", func(t *testing.T) {
		hookMu.Lock()
		if hooked["fast"] != 2 || hooked["nic"] != 0 {
			t.Errorf("OnPoolPorts saw %v", hooked)
		}
		hookMu.Unlock()
		if !strings.Contains(logs.String(), "no Solarflare interfaces") {
			t.Errorf("no clear 'no Solarflare interfaces' status in the logs:\n%s", logs.String())
		}
	})

	step("graceful shutdown removes the plugin sockets", func(t *testing.T) {
		stop()
		for _, s := range []string{"efvi-fast.sock", "efvi-nic.sock"} {
			if _, err := os.Stat(filepath.Join(pluginDir, s)); !os.IsNotExist(err) {
				t.Errorf("%s after shutdown: %v", s, err)
			}
		}
	})

	step("a restart on the same state restores the allocation", func(t *testing.T) {
		a2 := New(Options{ConfigPath: cfgPath, SysfsRoot: tree.Root, DevFS: fstest.MapFS{}, Events: sysfstest.NewEvents(), PodResources: pr})
		ctx2, cancel2 := context.WithCancel(context.Background())
		done2 := make(chan error)
		go func() { done2 <- a2.Run(ctx2) }()
		k.WaitRegistration()
		k.WaitRegistration()
		if n := len(a2.alloc.Allocations()); n != 1 {
			t.Errorf("allocations after agent restart: %d, want 1", n)
		}
		cancel2()
		if err := <-done2; err != nil {
			t.Fatal(err)
		}
	})
}

func TestAgentBadConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	writeConfig(t, p, "pools:\n- {name: a, backend: software, selector: {interfaces: [x]}}\n")
	err := New(Options{ConfigPath: p}).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "pools[0].visPerPort") || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v", err)
	}
}

func TestAutoPoolsAndMatching(t *testing.T) {
	sfc := discovery.Port{Name: "sfc0", Driver: "sfc", MAC: "00:0f:53:00:00:01", PCIAddress: "0000:3b:00.0"}
	virt := discovery.Port{Name: "eth0", Driver: "virtio_net"}
	a := New(Options{})
	a.cfg = &config.Config{}
	a.ports = []discovery.Port{sfc, virt, {Name: "Bad_Name", Driver: "sfc_efct"}}
	pools := a.effectivePoolsLocked()
	if len(pools) != 1 || pools[0].Name != "sfc0" || pools[0].Backend != config.Hardware || pools[0].ResourceName() != "efvi.io/sfc0" {
		t.Fatalf("auto pools %+v", pools)
	}
	hw := config.Pool{Backend: config.Hardware}
	if !Matches(hw, sfc) || Matches(hw, virt) {
		t.Error("hardware pools must take exactly the Solarflare ports")
	}
	sw := config.Pool{Backend: config.Software, Selector: config.Selector{MACs: []string{"00:0F:53:00:00:01"}, Drivers: []string{"sfc"}}}
	if !Matches(sw, sfc) || Matches(sw, virt) {
		t.Error("MAC (case-insensitive) + driver selector")
	}
}

// dirBackend is a test Backend: directories only, port changes recorded.
type dirBackend struct {
	allocdir.Dirs
	onPorts func(config.Pool, []discovery.Port)
	health  func(config.Pool, discovery.Port) error
}

func (d *dirBackend) OnPoolPorts(p config.Pool, ports []discovery.Port) {
	if d.onPorts != nil {
		d.onPorts(p, ports)
	}
}

func (d *dirBackend) PortHealth(p config.Pool, port discovery.Port) error {
	if d.health != nil {
		return d.health(p, port)
	}
	return nil
}
