package deviceplugin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/kubelettest"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// dirBroker is a test BrokerProvider: one directory per allocation.
type dirBroker struct {
	root     string
	mu       sync.Mutex
	released []string
}

func (b *dirBroker) Prepare(_ context.Context, r PrepareRequest) (Mount, error) {
	d := filepath.Join(b.root, r.Pool, r.AllocationID)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return Mount{}, err
	}
	return Mount{HostPath: d}, nil
}

func (b *dirBroker) Release(_ context.Context, pool, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.released = append(b.released, id)
	return os.RemoveAll(filepath.Join(b.root, pool, id))
}

type fixture struct {
	dir     string
	kubelet *kubelettest.Kubelet
	alloc   *allocator.Allocator
	mgr     *Manager
	broker  *dirBroker
	spec    allocator.PoolSpec
}

func newFixture(t testing.TB, hardware bool, cdiDir string) *fixture {
	t.Helper()
	dir := kubelettest.TempDir(t)
	f := &fixture{dir: dir, kubelet: kubelettest.Start(t, dir), broker: &dirBroker{root: filepath.Join(kubelettest.TempDir(t), "alloc")}}
	f.alloc, _ = allocator.New(allocator.Options{})
	f.spec = allocator.PoolSpec{Name: "fast", Resource: "efvi.io/fast", Policy: allocator.Spread, Ports: []allocator.Port{
		{Name: "eth0", NUMANode: 0, Capacity: 2, Healthy: true},
		{Name: "eth1", NUMANode: 1, Capacity: 2, Healthy: true},
	}}
	f.alloc.SetPool(f.spec)
	be := &PoolBackend{Pool: "fast", Resource: "efvi.io/fast", Hardware: hardware, Alloc: f.alloc, Broker: f.broker,
		DevFS: fstest.MapFS{"dev/sfc_char": {}, "dev/onload": {}}}
	if cdiDir != "" {
		w, err := NewCDIWriter(cdiDir)
		if err != nil {
			t.Fatal(err)
		}
		be.CDI = w
	}
	f.mgr = NewManager(dir, nil, nil)
	f.mgr.Add(NewPlugin("fast", "efvi.io/fast", dir, be, nil, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.mgr.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return f
}

func TestRegistrationAndListAndWatch(t *testing.T) {
	f := newFixture(t, false, "")
	reg := f.kubelet.WaitRegistration()
	want := &pluginapi.RegisterRequest{Version: "v1beta1", Endpoint: "efvi-fast.sock", ResourceName: "efvi.io/fast",
		Options: &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}}
	if !proto.Equal(reg.Req, want) { // generated messages: compare with proto.Equal
		t.Fatalf("Register = %+v, want %+v", reg.Req, want)
	}
	c := f.kubelet.Client(reg.Req.Endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts, err := c.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
	if err != nil || !opts.GetPreferredAllocationAvailable || opts.PreStartRequired {
		t.Fatalf("options %+v, %v", opts, err)
	}
	if _, err := c.PreStartContainer(ctx, &pluginapi.PreStartContainerRequest{}); err != nil {
		t.Fatal(err)
	}
	stream, err := c.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	health := func() map[string]string {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, d := range r.Devices {
			m[d.ID] = d.Health
			numa := d.Topology.GetNodes()[0].ID
			if (strings.HasPrefix(d.ID, "eth0") && numa != 0) || (strings.HasPrefix(d.ID, "eth1") && numa != 1) {
				t.Errorf("device %s has NUMA %d", d.ID, numa)
			}
		}
		return m
	}
	if got := health(); !reflect.DeepEqual(got, map[string]string{"eth0-vi0": "Healthy", "eth0-vi1": "Healthy", "eth1-vi0": "Healthy", "eth1-vi1": "Healthy"}) {
		t.Fatalf("initial = %v", got)
	}
	// Link of eth1 goes down → its slots Unhealthy; back up → Healthy.
	f.spec.Ports[1].Healthy = false
	f.alloc.SetPool(f.spec)
	f.mgr.NotifyAll()
	if got := health(); got["eth1-vi0"] != "Unhealthy" || got["eth1-vi1"] != "Unhealthy" || got["eth0-vi0"] != "Healthy" {
		t.Fatalf("after link down = %v", got)
	}
	f.spec.Ports[1].Healthy = true
	f.alloc.SetPool(f.spec)
	f.mgr.NotifyAll()
	if got := health(); got["eth1-vi0"] != "Healthy" {
		t.Fatalf("after recovery = %v", got)
	}
}

func TestPreferredAllocationRPC(t *testing.T) {
	f := newFixture(t, false, "")
	c := f.kubelet.Client(f.kubelet.WaitRegistration().Req.Endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.GetPreferredAllocation(ctx, &pluginapi.PreferredAllocationRequest{ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: []string{"eth0-vi0", "eth0-vi1", "eth1-vi0", "eth1-vi1"}, MustIncludeDeviceIDs: []string{"eth1-vi1"}, AllocationSize: 2},
		{AvailableDeviceIDs: []string{"eth0-vi0", "eth0-vi1", "eth1-vi0", "eth1-vi1"}, AllocationSize: 1},
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := [][]string{resp.ContainerResponses[0].DeviceIDs, resp.ContainerResponses[1].DeviceIDs}
	if want := [][]string{{"eth1-vi1", "eth1-vi0"}, {"eth0-vi0"}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("preferred = %v, want %v", got, want)
	}
}

func allocate(t testing.TB, c pluginapi.DevicePluginClient, devs ...[]string) (*pluginapi.AllocateResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := &pluginapi.AllocateRequest{}
	for _, d := range devs {
		req.ContainerRequests = append(req.ContainerRequests, &pluginapi.ContainerAllocateRequest{DevicesIds: d})
	}
	return c.Allocate(ctx, req)
}

func TestAllocatePayloadSoftware(t *testing.T) {
	f := newFixture(t, false, "")
	c := f.kubelet.Client(f.kubelet.WaitRegistration().Req.Endpoint)
	resp, err := allocate(t, c, []string{"eth0-vi0", "eth1-vi1"})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.ContainerResponses[0]
	als := f.alloc.Allocations()
	if len(als) != 1 {
		t.Fatalf("allocations %+v", als)
	}
	id := als[0].ID
	wantEnv := map[string]string{
		"EFVI_SOCKET": "/run/efvi/fast/broker.sock", "EFVI_SOCKET_FAST": "/run/efvi/fast/broker.sock",
		"EFVI_DEVICES": "eth0-vi0,eth1-vi1", "EFVI_DEVICES_FAST": "eth0-vi0,eth1-vi1",
	}
	if !reflect.DeepEqual(r.Envs, wantEnv) {
		t.Errorf("envs = %v, want %v", r.Envs, wantEnv)
	}
	hostDir := filepath.Join(f.broker.root, "fast", id)
	if len(r.Mounts) != 1 || r.Mounts[0].HostPath != hostDir || r.Mounts[0].ContainerPath != "/run/efvi/fast" || r.Mounts[0].ReadOnly {
		t.Errorf("mounts = %+v, want %s → /run/efvi/fast", r.Mounts, hostDir)
	}
	if st, err := os.Stat(hostDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("allocation dir: %v %v", st, err)
	}
	if len(r.Devices) != 0 || len(r.CdiDevices) != 0 {
		t.Errorf("software pool got device nodes %v / CDI %v", r.Devices, r.CdiDevices)
	}
	// The same slot again is refused (no Reclaim configured), and the
	// failed request leaves nothing behind.
	if _, err := allocate(t, c, []string{"eth0-vi1"}, []string{"eth0-vi0"}); err == nil || !strings.Contains(err.Error(), "held by allocation "+id) {
		t.Fatalf("double allocation: %v", err)
	}
	if n := len(f.alloc.Allocations()); n != 1 {
		t.Fatalf("a failed multi-container Allocate left %d allocations, want 1", n)
	}
	if len(f.broker.released) != 1 {
		t.Fatalf("broker releases %v, want the first container's undone", f.broker.released)
	}
	if _, err := allocate(t, c, []string{"eth9-vi0"}); err == nil || !strings.Contains(err.Error(), "not offered") {
		t.Fatalf("unknown device: %v", err)
	}
}

func TestAllocatePayloadHardware(t *testing.T) {
	f := newFixture(t, true, "")
	c := f.kubelet.Client(f.kubelet.WaitRegistration().Req.Endpoint)
	resp, err := allocate(t, c, []string{"eth0-vi0"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range resp.ContainerResponses[0].Devices {
		if d.HostPath != d.ContainerPath || d.Permissions != "rw" {
			t.Errorf("device %+v", d)
		}
		got = append(got, d.ContainerPath)
	}
	// /dev/onload exists in the fake /dev, /dev/onload_epoll does not.
	if want := []string{"/dev/sfc_char", "/dev/onload"}; !reflect.DeepEqual(got, want) {
		t.Errorf("device nodes %v, want %v", got, want)
	}
}

func TestAllocateHardwareWithoutSFCChar(t *testing.T) {
	a, _ := allocator.New(allocator.Options{})
	a.SetPool(allocator.PoolSpec{Name: "nic", Resource: "efvi.io/nic", Ports: []allocator.Port{{Name: "sfc0", Capacity: 1, Healthy: true}}})
	b := &PoolBackend{Pool: "nic", Resource: "efvi.io/nic", Hardware: true, Alloc: a, Broker: &dirBroker{root: t.TempDir()}, DevFS: fstest.MapFS{}}
	_, _, err := b.Allocate(context.Background(), []string{"sfc0-vi0"})
	if err == nil || !strings.Contains(err.Error(), "/dev/sfc_char not found") || !strings.Contains(err.Error(), "modprobe") {
		t.Fatalf("err = %v", err)
	}
	if len(a.Allocations()) != 0 {
		t.Fatal("failed Allocate kept the slot")
	}
}

func TestAllocateCDI(t *testing.T) {
	cdiDir := t.TempDir()
	f := newFixture(t, true, cdiDir)
	c := f.kubelet.Client(f.kubelet.WaitRegistration().Req.Endpoint)
	resp, err := allocate(t, c, []string{"eth1-vi0"})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.ContainerResponses[0]
	id := f.alloc.Allocations()[0].ID
	if len(r.CdiDevices) != 1 || r.CdiDevices[0].Name != "efvi.io/fast="+id {
		t.Fatalf("CDI devices %+v", r.CdiDevices)
	}
	if len(r.Mounts)+len(r.Devices)+len(r.Envs) != 0 {
		t.Errorf("CDI response also carries mounts/devices/envs: %+v", r)
	}
	// The spec must be readable by the CDI library (as containerd reads it)
	// and carry the payload.
	name, _ := SpecName("efvi.io/fast", id)
	spec, err := cdi.ReadSpec(filepath.Join(cdiDir, name+".json"), 0)
	if err != nil {
		t.Fatalf("read back CDI spec: %v", err)
	}
	dev := spec.GetDevice(id)
	if dev == nil {
		t.Fatalf("spec has no device %s", id)
	}
	edits := dev.ContainerEdits
	env := append([]string(nil), edits.Env...)
	sort.Strings(env)
	if !reflect.DeepEqual(env, []string{"EFVI_DEVICES=eth1-vi0", "EFVI_DEVICES_FAST=eth1-vi0", "EFVI_SOCKET=/run/efvi/fast/broker.sock", "EFVI_SOCKET_FAST=/run/efvi/fast/broker.sock"}) {
		t.Errorf("CDI env %v", env)
	}
	if len(edits.Mounts) != 1 || edits.Mounts[0].ContainerPath != "/run/efvi/fast" || len(edits.DeviceNodes) != 2 || edits.DeviceNodes[0].Path != "/dev/sfc_char" {
		t.Errorf("CDI edits %+v", edits)
	}
	// Undo of a failed request removes the spec.
	w, _ := NewCDIWriter(cdiDir)
	if err := w.Remove("efvi.io/fast", id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(cdiDir, name+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spec not removed: %v", err)
	}
}

// TestKubeletRestart: the fake kubelet restarts (deleting every socket, as
// the real one does); the plugin must come back on a new socket and
// register again, with the allocations intact.
func TestKubeletRestart(t *testing.T) {
	f := newFixture(t, false, "")
	c := f.kubelet.Client(f.kubelet.WaitRegistration().Req.Endpoint)
	if _, err := allocate(t, c, []string{"eth0-vi0"}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		f.kubelet.Restart()
		reg := f.kubelet.WaitRegistration()
		delay := reg.At.Sub(f.kubelet.Listening)
		t.Logf("restart %d: re-registered %v after the new kubelet.sock appeared", i+1, delay)
		// The kubelet's connection works on the new socket.
		c = f.kubelet.Client(reg.Req.Endpoint)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.GetDevicePluginOptions(ctx, &pluginapi.Empty{})
		cancel()
		if err != nil {
			t.Fatalf("plugin unreachable after restart: %v", err)
		}
	}
	if n := len(f.alloc.Allocations()); n != 1 {
		t.Fatalf("allocations after kubelet restarts: %d, want 1", n)
	}
	if _, err := allocate(t, c, []string{"eth0-vi0"}); err == nil {
		t.Fatal("slot issued twice after kubelet restart")
	}
}

// TestRegisterWaitsForKubelet: no kubelet.sock at start; the plugin
// registers as soon as it appears.
func TestRegisterWaitsForKubelet(t *testing.T) {
	dir := kubelettest.TempDir(t)
	a, _ := allocator.New(allocator.Options{})
	a.SetPool(allocator.PoolSpec{Name: "p", Resource: "efvi.io/p", Ports: []allocator.Port{{Name: "e", Capacity: 1, Healthy: true}}})
	m := NewManager(dir, nil, nil)
	m.Add(NewPlugin("p", "efvi.io/p", dir, &PoolBackend{Pool: "p", Alloc: a}, nil, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond) // the plugin is waiting; no assertion on time
	k := kubelettest.Start(t, dir)
	reg := k.WaitRegistration()
	t.Logf("registered %v after kubelet.sock appeared", reg.At.Sub(k.Listening))
	if reg.Req.ResourceName != "efvi.io/p" {
		t.Fatalf("registered %q", reg.Req.ResourceName)
	}
	// Removing the pool stops its server and socket.
	m.Remove("p")
	if _, err := os.Stat(filepath.Join(dir, "efvi-p.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after Remove: %v", err)
	}
}

// BenchmarkAllocate measures Allocate through real gRPC over a unix socket:
// allocator bookkeeping, broker directory, payload. It reports p50/p99.
// Sub-benchmarks: "checkpoint" is the agent (checkpoint fsynced before the
// answer), "memory" has no checkpoint (the cost of everything else).
func BenchmarkAllocate(b *testing.B) {
	b.Run("checkpoint", func(b *testing.B) { benchmarkAllocate(b, true) })
	b.Run("memory", func(b *testing.B) { benchmarkAllocate(b, false) })
}

func benchmarkAllocate(b *testing.B, checkpoint bool) {
	dir := kubelettest.TempDir(b)
	k := kubelettest.Start(b, dir)
	cp := ""
	if checkpoint {
		cp = filepath.Join(kubelettest.TempDir(b), "cp.json")
	}
	a, _ := allocator.New(allocator.Options{CheckpointPath: cp})
	defer a.Close() // the background checkpoint writer
	const slots = 1024
	a.SetPool(allocator.PoolSpec{Name: "fast", Resource: "efvi.io/fast", Ports: []allocator.Port{{Name: "eth0", Capacity: slots, Healthy: true}}})
	// The broker directories live in /run on a node, a tmpfs; /dev/shm is
	// the tmpfs here (this machine's /run is on its disk).
	brRoot := kubelettest.TempDir(b)
	if d, err := os.MkdirTemp("/dev/shm", "efvi"); err == nil {
		brRoot = d
		defer os.RemoveAll(d)
	}
	br := &dirBroker{root: brRoot}
	m := NewManager(dir, nil, nil)
	m.Add(NewPlugin("fast", "efvi.io/fast", dir, &PoolBackend{Pool: "fast", Resource: "efvi.io/fast", Alloc: a, Broker: br}, nil, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := k.Client(k.WaitRegistration().Req.Endpoint)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dev := allocator.DeviceID("eth0", i%slots)
		if i >= slots { // free the slot from the previous round
			b.StopTimer()
			for _, al := range a.Allocations() {
				if al.Devices[0] == dev {
					_ = a.Release(al.ID)
				}
			}
			b.StartTimer()
		}
		t0 := time.Now()
		if _, err := allocate(b, c, []string{dev}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}
