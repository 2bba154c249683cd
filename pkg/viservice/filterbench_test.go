package viservice_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// BenchmarkFilterAddDel measures one filter add + remove on a real port (data
// plane maps and the persisted filter table) that already holds n filters:
// the cost every pod on the port waits for under the port lock.
func BenchmarkFilterAddDel(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("filters=%d", n), func(b *testing.B) {
			topo := bench.NewTopology(b)
			topo.PrepareDataPlane(b)
			dir := b.TempDir()
			plane, err := dataplane.Open(context.Background(), dataplane.PortConfig{
				Ifname: topo.Port.Name, PinDir: filepath.Join(dataplane.DefaultBPFFS, "efvb-"+randHex(4)),
				VethPrefix: "eb" + randHex(2), Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = plane.Destroy() })
			port, err := viservice.NewPort(topo.Port.Name, topo.Port.MAC, 1500, plane)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := port.Warm(context.Background(), []uint32{0, 1, 2, 3}); err != nil {
				b.Fatal(err)
			}
			pol := filter.Policy{OwnIPs: []netip.Addr{topo.PortIP}}
			spec := func(p int) filter.Spec {
				s, err := filter.Parse(fmt.Sprintf("udp:%s:%d", topo.PortIP, p))
				if err != nil {
					b.Fatal(err)
				}
				return s
			}
			for i := range n {
				if _, err := port.AddFilter(filter.VIID(i%4), spec(1024+i), pol); err != nil {
					b.Fatalf("filter %d: %v", i, err)
				}
			}
			// Persisting from here on: Persist writes the n filters as the
			// port's initial state (filling the table through the persisted
			// path would cost O(n^2) on the old code).
			if err := port.Persist(filepath.Join(dir, "filters.json")); err != nil {
				b.Fatal(err)
			}
			extra := spec(60000)
			b.ResetTimer()
			for range b.N {
				c, err := port.AddFilter(1, extra, pol)
				if err != nil {
					b.Fatal(err)
				}
				if err := port.DelFilter(1, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
