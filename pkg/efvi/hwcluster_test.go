package efvi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/cluster"
)

// agentCluster is the agent's real cluster-protocol server (pkg/cluster)
// for one allocation, granting cluster name on port ifname with an fd of
// /dev/null as the "driver handle" (no NIC here).
type agentCluster struct {
	path      string
	allocs    atomic.Int32
	done      chan struct{} // one value per grant whose client disconnected
	lastFlags atomic.Int32
}

func startAgentCluster(t *testing.T, name, ifname string) *agentCluster {
	t.Helper()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { null.Close() })
	a := &agentCluster{path: filepath.Join(t.TempDir(), "cluster.sock"), done: make(chan struct{}, 16)}
	srv, err := cluster.Listen(cluster.Config{
		Path: a.path,
		Allocator: cluster.AllocatorFunc(func(ctx context.Context, req cluster.Request) (cluster.Grant, error) {
			if req.Cluster != name {
				return cluster.Grant{}, cluster.ErrNoCluster
			}
			a.allocs.Add(1)
			a.lastFlags.Store(int32(req.PDFlags))
			return cluster.Grant{PDResID: 7, VISetResID: 9, IfName: ifname, FD: int(null.Fd()), Done: func() { a.done <- struct{}{} }}, nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("cluster server: %v", err)
		}
	})
	return a
}

// waitDone waits for n grants to be released (the client closed its PD's
// socket); a leak fails the test instead of hanging it.
func (a *agentCluster) waitDone(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-a.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("the client did not release grant %d of %d: it leaks the agent's PD", i+1, n)
		}
	}
}

func TestHardwareSDKHandshake(t *testing.T) {
	a := startAgentCluster(t, "efvi-a1", "eth7")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ClusterProbe(ctx, a.path); err != nil {
		t.Fatalf("probe: %v", err)
	}
	g, err := ClusterHandshake(ctx, a.path, "0@efvi-a1", 0)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer g.Handle.Close()
	if g.PDResource != 7 || g.VISetResource != 9 || g.Interface != "eth7" || g.Handle == nil {
		t.Fatalf("grant %+v, want PD 7, VI set 9 on eth7 with a handle", g)
	}
	var st, null syscall.Stat_t
	if err := syscall.Fstat(int(g.Handle.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(os.DevNull, &null); err != nil {
		t.Fatal(err)
	}
	if st.Rdev != null.Rdev {
		t.Fatalf("the passed handle is not the agent's fd (rdev %#x, want %#x)", st.Rdev, null.Rdev)
	}
	if a.allocs.Load() != 1 {
		t.Fatalf("agent saw %d allocations, want 1 (the probe must allocate nothing)", a.allocs.Load())
	}
	a.waitDone(t, 1)

	_, err = ClusterHandshake(ctx, a.path, "other", 0)
	var ce *ClusterError
	if !errors.As(err, &ce) || !errors.Is(err, syscall.ENOENT) || ce.Name != "other" {
		t.Fatalf("unknown cluster: %v, want a ClusterError ENOENT naming it", err)
	}
	if _, err := ClusterHandshake(ctx, filepath.Join(t.TempDir(), "none.sock"), "efvi-a1", 0); err == nil || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("missing socket: %v", err)
	}
}
