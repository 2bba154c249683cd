package allocator

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

func twoNUMAPool(policy Policy) PoolSpec {
	return PoolSpec{Name: "fast", Resource: "efvi.io/fast", Policy: policy, Ports: []Port{
		{Name: "eth0", NUMANode: 0, Capacity: 4, Healthy: true},
		{Name: "eth1", NUMANode: 0, Capacity: 4, Healthy: true},
		{Name: "eth2", NUMANode: 1, Capacity: 4, Healthy: true},
	}}
}

func ids(a *Allocator, pool string) []string {
	var out []string
	for _, d := range a.Devices(pool) {
		out = append(out, d.ID)
	}
	return out
}

func without(all []string, drop ...string) []string {
	m := map[string]bool{}
	for _, d := range drop {
		m[d] = true
	}
	var out []string
	for _, d := range all {
		if !m[d] {
			out = append(out, d)
		}
	}
	return out
}

func TestDeviceIDRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		port string
		i    int
	}{{"sfc0", 0}, {"eth-vi1", 12}, {"a", 1023}} {
		p, i, ok := ParseDeviceID(DeviceID(tc.port, tc.i))
		if !ok || p != tc.port || i != tc.i {
			t.Errorf("round trip of %s/%d = %s/%d/%v", tc.port, tc.i, p, i, ok)
		}
	}
	for _, bad := range []string{"", "sfc0", "-vi1", "sfc0-vi", "sfc0-vi01", "sfc0-vix", "sfc0-vi-1", "x-vi99999999"} {
		if _, _, ok := ParseDeviceID(bad); ok {
			t.Errorf("ParseDeviceID(%q) accepted", bad)
		}
	}
}

func TestDevicesAndTopology(t *testing.T) {
	a, _ := New(Options{})
	a.SetPool(twoNUMAPool(Spread))
	devs := a.Devices("fast")
	if len(devs) != 12 || devs[0].ID != "eth0-vi0" || devs[11].ID != "eth2-vi3" || devs[11].NUMANode != 1 {
		t.Fatalf("devices = %+v", devs)
	}
}

func TestPreferred(t *testing.T) {
	for _, tc := range []struct {
		name        string
		policy      Policy
		held        []string // allocated first, one by one
		available   []string // nil = all offered minus held
		mustInclude []string
		size        int
		want        []string
	}{
		// NUMA node 0 has 8 free, node 1 has 4: spread takes the node with most free,
		// then alternates ports.
		{name: "spread empty", policy: Spread, size: 2, want: []string{"eth0-vi0", "eth1-vi0"}},
		// pack takes the node with the fewest free that fits (node 1), one port.
		{name: "pack empty", policy: Pack, size: 2, want: []string{"eth2-vi0", "eth2-vi1"}},
		// A request bigger than node 1 goes to node 0 under pack.
		{name: "pack fits", policy: Pack, size: 5, want: []string{"eth0-vi0", "eth0-vi1", "eth0-vi2", "eth0-vi3", "eth1-vi0"}},
		// pack fills the fuller port: eth1 has 1 allocated.
		{name: "pack fuller port", policy: Pack, held: []string{"eth1-vi0"}, available: without(nil), size: 1, want: []string{"eth2-vi0"}},
		{name: "pack fuller port same numa", policy: Pack, held: []string{"eth1-vi0", "eth2-vi0"}, size: 1, want: []string{"eth2-vi1"}},
		// spread avoids the port with allocations.
		{name: "spread emptier port", policy: Spread, held: []string{"eth0-vi0", "eth0-vi1"}, size: 1, want: []string{"eth1-vi0"}},
		// must-include on node 1 pulls the rest to node 1.
		{name: "numa from mustInclude", policy: Spread, mustInclude: []string{"eth2-vi3"}, size: 3, want: []string{"eth2-vi3", "eth2-vi0", "eth2-vi1"}},
		// node 1 has only 4: the fifth spills to node 0.
		{name: "numa spill", policy: Spread, mustInclude: []string{"eth2-vi0"}, size: 5, want: []string{"eth2-vi0", "eth2-vi1", "eth2-vi2", "eth2-vi3", "eth0-vi0"}},
		// a held device is never suggested even if the kubelet lists it.
		{name: "held not suggested", policy: Pack, held: []string{"eth2-vi0"}, available: []string{"eth2-vi0", "eth2-vi1"}, size: 1, want: []string{"eth2-vi1"}},
		// not enough: a shorter answer.
		{name: "short", policy: Spread, available: []string{"eth0-vi0", "bogus", "eth9-vi0", "eth0-vi7"}, size: 3, want: []string{"eth0-vi0"}},
		{name: "mustInclude only", policy: Spread, mustInclude: []string{"eth1-vi2", "eth1-vi2"}, size: 1, want: []string{"eth1-vi2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := New(Options{})
			a.SetPool(twoNUMAPool(tc.policy))
			for _, d := range tc.held {
				if _, err := a.Allocate("fast", []string{d}); err != nil {
					t.Fatal(err)
				}
			}
			avail := tc.available
			if avail == nil {
				avail = without(ids(a, "fast"), tc.held...)
			}
			got, err := a.Preferred("fast", avail, tc.mustInclude, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Preferred = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPreferredSkipsUnhealthy(t *testing.T) {
	a, _ := New(Options{})
	spec := twoNUMAPool(Spread)
	spec.Ports[0].Healthy = false
	spec.Ports[1].Healthy = false
	a.SetPool(spec)
	got, err := a.Preferred("fast", ids(a, "fast"), nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []string{"eth2-vi0", "eth2-vi1"}) {
		t.Fatalf("got %v", got)
	}
	if _, err := a.Preferred("nope", nil, nil, 1); err == nil {
		t.Fatal("unknown pool accepted")
	}
}

func TestAllocateNeverTwice(t *testing.T) {
	a, _ := New(Options{})
	a.SetPool(twoNUMAPool(Spread))
	al, err := a.Allocate("fast", []string{"eth0-vi0", "eth0-vi1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Allocate("fast", []string{"eth0-vi1"})
	var inUse *InUseError
	if !errors.As(err, &inUse) || inUse.Holder.ID != al.ID || inUse.Device != "eth0-vi1" {
		t.Fatalf("second allocate of a held device: %v", err)
	}
	for _, bad := range [][]string{{"eth0-vi4"}, {"eth7-vi0"}, {"eth1-vi0", "eth1-vi0"}, {}} {
		if _, err := a.Allocate("fast", bad); err == nil {
			t.Errorf("Allocate(%v) accepted", bad)
		}
	}
	if err := a.Release(al.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allocate("fast", []string{"eth0-vi1"}); err != nil {
		t.Fatalf("after release: %v", err)
	}
}

func TestConcurrentAllocateOneWinner(t *testing.T) {
	a, _ := New(Options{})
	a.SetPool(twoNUMAPool(Spread))
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.Allocate("fast", []string{"eth2-vi2"}); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d concurrent allocations of one slot succeeded, want 1", wins)
	}
}

func TestCapacityShrinkKeepsAllocations(t *testing.T) {
	a, _ := New(Options{})
	a.SetPool(twoNUMAPool(Spread))
	if _, err := a.Allocate("fast", []string{"eth0-vi3"}); err != nil {
		t.Fatal(err)
	}
	spec := twoNUMAPool(Spread)
	spec.Ports[0].Capacity = 2
	a.SetPool(spec)
	for _, d := range a.Devices("fast") {
		if d.ID == "eth0-vi3" || d.ID == "eth0-vi2" {
			t.Fatalf("slot %s beyond capacity still offered", d.ID)
		}
	}
	st := a.Stats()
	if st[0].Port != "eth0" || st[0].Capacity != 2 || st[0].Allocated != 1 || st[0].Healthy != 2 {
		t.Fatalf("stats = %+v", st[0])
	}
	if len(a.Allocations()) != 1 {
		t.Fatal("allocation dropped by a capacity change")
	}
	a.RemovePool("fast")
	if len(a.Allocations()) != 1 {
		t.Fatal("allocation dropped by pool removal")
	}
}

func TestCheckpointRestore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "allocations.json")
	a, err := New(Options{CheckpointPath: path})
	if err != nil {
		t.Fatal(err)
	}
	a.SetPool(twoNUMAPool(Spread))
	al1, err := a.Allocate("fast", []string{"eth0-vi0", "eth2-vi1"})
	if err != nil {
		t.Fatal(err)
	}
	al2, err := a.Allocate("fast", []string{"eth1-vi3"})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Release(al2.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil { // the checkpoint is written in the background
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("checkpoint stat %v, %v", st, err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}

	// "Restart": a new allocator from the same file.
	b, err := New(Options{CheckpointPath: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	b.SetPool(twoNUMAPool(Spread))
	got := b.Allocations()
	if len(got) != 1 || got[0].ID != al1.ID || !reflect.DeepEqual(got[0].Devices, al1.Devices) || !got[0].Created.Equal(al1.Created) {
		t.Fatalf("restored %+v, want %+v", got, al1)
	}
	var inUse *InUseError
	if _, err := b.Allocate("fast", []string{"eth2-vi1"}); !errors.As(err, &inUse) {
		t.Fatalf("restored slot issued again: %v", err)
	}
	if _, err := b.Allocate("fast", []string{"eth1-vi3"}); err != nil {
		t.Fatalf("released slot not free after restore: %v", err)
	}
}

func TestCheckpointCorrupt(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"garbage":  "{not json",
		"checksum": `{"version":1,"allocations":[{"id":"x","pool":"p","devices":["a-vi0"]}],"checksum":"00"}`,
		"version":  `{"version":7,"allocations":[],"checksum":""}`,
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := New(Options{CheckpointPath: p})
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want an error naming the file", name, err)
		}
	}
}

func TestReconcileInMemory(t *testing.T) {
	now := time.Unix(1000, 0)
	a, _ := New(Options{Grace: time.Minute, Now: func() time.Time { return now }})
	a.SetPool(twoNUMAPool(Spread))
	seen, _ := a.Allocate("fast", []string{"eth0-vi0"})
	young, _ := a.Allocate("fast", []string{"eth0-vi1"})
	owner := Owner{Namespace: "trading", Pod: "p1", Container: "c"}
	freed, err := a.Reconcile([]Held{{Resource: "efvi.io/fast", Device: "eth0-vi0", Owner: owner},
		{Resource: "other.io/x", Device: "gpu0"}}, nil)
	if err != nil || len(freed) != 0 {
		t.Fatalf("first reconcile freed %v, %v", freed, err)
	}
	// The young one is not reported but within grace; reclaim frees it.
	freed, _ = a.Reconcile(nil, []string{"eth0-vi1"})
	if len(freed) != 2 {
		t.Fatalf("freed %v, want the seen one (pod gone) and the reclaimed one", freed)
	}
	_ = seen
	_ = young
	// Grace expiry.
	old, _ := a.Allocate("fast", []string{"eth1-vi0"})
	now = now.Add(2 * time.Minute)
	freed, _ = a.Reconcile(nil, nil)
	if len(freed) != 1 || freed[0].ID != old.ID {
		t.Fatalf("freed %v, want %s", freed, old.ID)
	}
}

// fakePodResources is a kubelet PodResources server over a real unix socket.
type fakePodResources struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	mu   sync.Mutex
	pods []*podresourcesv1.PodResources
}

func (f *fakePodResources) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &podresourcesv1.ListPodResourcesResponse{PodResources: f.pods}, nil
}

func (f *fakePodResources) set(pods ...*podresourcesv1.PodResources) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods = pods
}

func pod(ns, name, resource string, devs ...string) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: []*podresourcesv1.ContainerResources{{
		Name: "app", Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: devs}}}}}
}

func startPodResources(t *testing.T) (*fakePodResources, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "efvi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "pr.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	f := &fakePodResources{}
	podresourcesv1.RegisterPodResourcesListerServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return f, sock
}

// TestReconcilePodResources drives Reconcile from a fake kubelet over gRPC:
// owners are learned, a deleted pod's slots come back, unknown held devices
// are adopted (and so never issued twice), across a checkpoint restore.
func TestReconcilePodResources(t *testing.T) {
	f, sock := startPodResources(t)
	client, err := DialPodResources(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "cp.json")
	a, _ := New(Options{CheckpointPath: path})
	t.Cleanup(func() { a.Close() })
	a.SetPool(twoNUMAPool(Spread))

	al, err := a.Allocate("fast", []string{"eth0-vi0", "eth0-vi1"})
	if err != nil {
		t.Fatal(err)
	}
	reconcile := func() []Allocation {
		t.Helper()
		held, err := client.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		freed, err := a.Reconcile(held, nil)
		if err != nil {
			t.Fatal(err)
		}
		return freed
	}
	// The kubelet reports pod A with our devices, and pod B with a device the
	// checkpoint does not know (e.g. allocated while the agent was down).
	f.set(pod("trading", "a", "efvi.io/fast", "eth0-vi0", "eth0-vi1"),
		pod("trading", "b", "efvi.io/fast", "eth2-vi2"),
		pod("other", "gpu", "nvidia.com/gpu", "GPU-1"))
	if freed := reconcile(); len(freed) != 0 {
		t.Fatalf("freed %v", freed)
	}
	all := a.Allocations()
	if len(all) != 2 {
		t.Fatalf("allocations %+v, want ours + one adopted", all)
	}
	for _, x := range all {
		switch {
		case x.ID == al.ID:
			if x.Owner != (Owner{"trading", "a", "app"}) || !x.Seen {
				t.Errorf("owner not learned: %+v", x)
			}
		case x.Adopted:
			if !reflect.DeepEqual(x.Devices, []string{"eth2-vi2"}) || x.Owner.Pod != "b" {
				t.Errorf("adopted %+v", x)
			}
		default:
			t.Errorf("unexpected allocation %+v", x)
		}
	}
	var inUse *InUseError
	if _, err := a.Allocate("fast", []string{"eth2-vi2"}); !errors.As(err, &inUse) {
		t.Fatalf("adopted slot issued again: %v", err)
	}

	// Restart from the checkpoint, then pod A is deleted.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a, err = New(Options{CheckpointPath: path})
	if err != nil {
		t.Fatal(err)
	}
	a.SetPool(twoNUMAPool(Spread))
	f.set(pod("trading", "b", "efvi.io/fast", "eth2-vi2"))
	freed := reconcile()
	if len(freed) != 1 || freed[0].ID != al.ID {
		t.Fatalf("freed %+v, want pod a's allocation %s", freed, al.ID)
	}
	if _, err := a.Allocate("fast", []string{"eth0-vi0", "eth0-vi1"}); err != nil {
		t.Fatalf("slots of the deleted pod did not come back: %v", err)
	}
}

func TestPodResourcesUnavailable(t *testing.T) {
	dir, _ := os.MkdirTemp("", "efvi")
	defer os.RemoveAll(dir)
	c, err := DialPodResources(filepath.Join(dir, "missing.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := c.List(ctx); err == nil || !strings.Contains(err.Error(), "PodResources") {
		t.Fatalf("err = %v", err)
	}
}
