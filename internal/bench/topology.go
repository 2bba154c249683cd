package bench

import (
	"crypto/rand"
	"fmt"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
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

// NewTopology builds the topology for one test or benchmark on a /24 of
// its own and removes it when tb ends. Tests of several packages run at once
// in the root namespace, so the subnet is drawn at random from
// 10.200.0.0–10.254.255.0 and checked against the addresses already there:
// two ports with one subnet would steal each other's routes and ports.
func NewTopology(tb testing.TB) *Topology {
	tb.Helper()
	testnet.RequireRoot(tb)
	ns := testnet.NewNS(tb)
	port, wire := testnet.VethPair(tb, nil, ns)
	sub, err := freeSubnet()
	if err != nil {
		tb.Fatal(err)
	}
	t := &Topology{
		Fabric: ns, Port: port, Wire: wire,
		PortIP:   netip.AddrFrom4([4]byte{10, sub[0], sub[1], 1}),
		FabricIP: netip.AddrFrom4([4]byte{10, sub[0], sub[1], 2}),
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

// PrepareDataPlane readies the topology for the agent's data plane on the
// port: bpffs mounted, and an XDP_PASS program on the fabric end of the wire
// (frames redirected into a veth vanish unless the receiving end has XDP).
func (t *Topology) PrepareDataPlane(tb testing.TB) {
	tb.Helper()
	if err := dataplane.EnsureBPFFS(dataplane.DefaultBPFFS); err != nil {
		tb.Fatal(err)
	}
	if err := t.Fabric.Do(func() error {
		c, err := dataplane.AttachPassXDP(t.Wire.Index)
		if err != nil {
			return err
		}
		tb.Cleanup(func() { c.Close() })
		return nil
	}); err != nil {
		tb.Fatalf("XDP_PASS on the fabric end %s: %v", t.Wire.Name, err)
	}
}

// freeSubnet picks 10.a.b.0/24 (a in 200..254) that no root-namespace
// address is in.
func freeSubnet() ([2]byte, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return [2]byte{}, fmt.Errorf("list addresses: %w", err)
	}
	used := map[[2]byte]bool{}
	for _, a := range addrs {
		if ip := a.IP.To4(); ip != nil && ip[0] == 10 {
			used[[2]byte{ip[1], ip[2]}] = true
		}
	}
	for range 100 {
		var r [2]byte
		if _, err := rand.Read(r[:]); err != nil {
			return r, err
		}
		sub := [2]byte{200 + r[0]%55, 1 + r[1]%254}
		if !used[sub] {
			return sub, nil
		}
	}
	return [2]byte{}, fmt.Errorf("no free 10.2xx.y.0/24 among 100 draws")
}
