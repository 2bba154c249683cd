package bench

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
)

// Topology is the benchmark network: a port netdev in the root namespace
// (the interface that plays the Solarflare port, where the node's receivers
// run) joined by a veth to a "fabric" namespace, where the load generators
// run. Nothing leaves the machine.
type Topology struct {
	Fabric   *testnet.NS
	Port     testnet.Veth // root-namespace end
	Wire     testnet.Veth // fabric end
	PortIP   netip.Addr
	FabricIP netip.Addr
}

// NewTopology builds the topology for one test or benchmark, on subnet
// 10.<subnet>.0.0/24, and removes it when tb ends.
func NewTopology(tb testing.TB, subnet uint8) *Topology {
	tb.Helper()
	testnet.RequireRoot(tb)
	ns := testnet.NewNS(tb)
	port, wire := testnet.VethPair(tb, nil, ns)
	t := &Topology{
		Fabric: ns, Port: port, Wire: wire,
		PortIP:   netip.AddrFrom4([4]byte{10, subnet, 0, 1}),
		FabricIP: netip.AddrFrom4([4]byte{10, subnet, 0, 2}),
	}
	for _, a := range []struct {
		v  testnet.Veth
		ip netip.Addr
	}{{port, t.PortIP}, {wire, t.FabricIP}} {
		if err := a.v.AddAddr(fmt.Sprintf("%s/24", a.ip)); err != nil {
			tb.Fatal(err)
		}
	}
	return t
}
