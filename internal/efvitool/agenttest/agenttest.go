// Package agenttest runs the node agent's software VI backend in a test, on
// one port of a bench.Topology, with one allocation whose broker socket the
// ef_vi tools connect to: what a pod gets, in-process.
package agenttest

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/softvi"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// Agent is a software backend with one allocation (slot vi0) on the port.
type Agent struct {
	Alloc *viservice.Allocation
	// Socket is the allocation's broker socket ($EFVI_SOCKET in a pod).
	Socket string
}

// Start builds the topology's fabric side (an XDP_PASS program on the wire,
// which veth needs to receive redirected frames), the agent's data plane on
// topo.Port, one allocation whose pod IP is topo.PortIP, and removes it all
// when t ends. name keeps pinned paths apart between tests.
func Start(t testing.TB, topo *bench.Topology, name string) *Agent {
	t.Helper()
	topo.PrepareDataPlane(t)
	dir, err := os.MkdirTemp("", name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bpf := filepath.Join(dataplane.DefaultBPFFS, "efvt-"+name+"-"+filepath.Base(dir))
	b := softvi.New(softvi.Config{BPFRoot: bpf, Authorizer: broker.AllowAny()})
	b.UseDirs(filepath.Join(dir, "run"), filepath.Join(dir, "state"))
	t.Cleanup(func() {
		b.Release(context.Background(), "p", "a1")
		b.Close()
		if p, err := dataplane.Open(context.Background(), dataplane.PortConfig{Ifname: topo.Port.Name, PinDir: filepath.Join(bpf, topo.Port.Name), VethPrefix: "x"}); err == nil {
			p.Destroy()
		}
		os.RemoveAll(bpf)
	})
	b.OnPoolPorts(config.Pool{Name: "p", Backend: config.Software}, []discovery.Port{{Name: topo.Port.Name}})
	m, err := b.Prepare(context.Background(), deviceplugin.PrepareRequest{Pool: "p", AllocationID: "a1", Devices: []string{topo.Port.Name + "-vi0"}})
	if err != nil {
		t.Fatal(err)
	}
	_, alloc, _ := b.Registry().ByDevice(topo.Port.Name + "-vi0")
	// What the CNI does at pod start: tell the agent the pod's IP.
	if err := alloc.SetPolicy(filter.Policy{OwnIPs: []netip.Addr{topo.PortIP}}); err != nil {
		t.Fatal(err)
	}
	return &Agent{Alloc: alloc, Socket: filepath.Join(m.HostPath, softvi.SocketName)}
}
