package efvi_test

import (
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
	"github.com/kube-efvi/kube-efvi/pkg/xsk/xsktest"
)

func BenchmarkPollEmpty(b *testing.B) {
	tp := xsktest.New(b)
	vi := newVI(b, tp, agentCfg{}, efvi.Options{})
	postAll(b, vi, 0, 256, 0)
	evs := make([]efvi.Event, 32)
	b.ReportAllocs()
	for b.Loop() {
		if vi.EventQPoll(evs) != 0 {
			b.Fatal("unexpected event")
		}
	}
}

// flooder transmits 64-byte UDP frames from the fabric end as fast as it
// can, through its own AF_XDP socket (copy mode) on the fabric veth.
type flooder struct {
	stop chan struct{}
	done chan struct{}
	sent atomic.Uint64
}

func startFlood(b *testing.B, tp *xsktest.Topo) *flooder {
	b.Helper()
	const frames = 256
	u := xsk.UMEMConfig{NumFrames: frames}
	mem, err := xsk.NewMemfd("efvt-flood", u.Size())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { mem.Close() })
	var s *xsk.Socket
	if err := tp.Fabric.Do(func() error {
		var err error
		s, err = xsk.Create(xsk.Config{Ifindex: tp.Peer.Index, UMEM: u, Mem: mem, RxSize: xsk.NoRing,
			TxSize: 2048, FillSize: 64, CompSize: 2048, TxBudget: 256})
		return err
	}); err != nil {
		b.Fatalf("flood socket: %v", err)
	}
	b.Cleanup(func() { s.Close() })
	r, err := xsk.Map(int(s.FD.Fd()), int(mem.Fd()), s.Geometry)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	fl := frame.UDPFlow{SrcMAC: frame.MAC(tp.Peer.MAC), DstMAC: frame.MAC(tp.Port.MAC),
		Src: netip.AddrPortFrom(tp.PeerIP, 1234), Dst: netip.AddrPortFrom(tp.PortIP, 9000)}
	var flen int
	for i := 0; i < frames; i++ {
		flen, err = fl.Build(r.UMEM[i*2048:(i+1)*2048], make([]byte, 64-42))
		if err != nil {
			b.Fatal(err)
		}
	}
	f := &flooder{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var inflight, next uint32
		for {
			select {
			case <-f.stop:
				return
			default:
			}
			if idx, k := r.Comp.Peek(2048); k > 0 {
				_ = idx
				r.Comp.Release(k)
				inflight -= k
			}
			batch := uint32(64)
			if inflight+batch > frames {
				batch = frames - inflight
			}
			if batch > 0 {
				if idx, ok := r.Tx.Reserve(batch); ok {
					for j := uint32(0); j < batch; j++ {
						r.Tx.Set(idx+j, uint64(next%frames)*2048, uint32(flen), 0)
						next++
					}
					r.Tx.Submit()
					inflight += batch
					f.sent.Add(uint64(batch))
				}
			}
			xsk.KickTx(r.FD)
		}
	}()
	return f
}

func (f *flooder) Stop() {
	close(f.stop)
	<-f.done
}

func BenchmarkRxFlood64(b *testing.B) {
	for _, c := range []struct {
		name   string
		cfg    agentCfg
		opts   efvi.Options
		policy bool
	}{
		// ef_vi defaults: 512-entry rings, refill in big batches when half empty.
		{"naive-512-batched", agentCfg{frames: 1024, rx: 512, fill: 512}, efvi.Options{IdleKickAfter: -1}, false},
		// The policy: big rings, refill after every poll, idle kicks.
		{"policy-2048-refill", agentCfg{frames: 4096, rx: 2048, fill: 2048}, efvi.Options{}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			tp := xsktest.New(b)
			vi := newVI(b, tp, c.cfg, c.opts)
			pool := efvi.NewBufPool(0, vi.Memory().NumBufs())
			vi.RefillFrom(pool)
			evs := make([]efvi.Event, 64)
			fl := startFlood(b, tp)
			defer fl.Stop()
			// Warm up until traffic flows.
			deadline := time.Now().Add(5 * time.Second)
			for vi.EventQPoll(evs) == 0 && time.Now().Before(deadline) {
			}
			for vi.ReceiveFillLevel() < vi.ReceiveCapacity()/2 {
				for n := vi.EventQPoll(evs); n > 0; n-- {
					pool.Put(int(evs[n-1].RqID))
				}
				vi.RefillFrom(pool)
			}
			st0, _ := vi.Stats()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			got := 0
			for got < b.N {
				n := vi.EventQPoll(evs)
				for i := 0; i < n; i++ {
					if evs[i].Type == efvi.EventRX || evs[i].Type == efvi.EventRXDiscard {
						pool.Put(int(evs[i].RqID))
						got++
					}
				}
				if c.policy {
					if n > 0 {
						vi.RefillFrom(pool)
					}
				} else if vi.ReceiveSpace() >= vi.ReceiveCapacity()/2 {
					vi.RefillFrom(pool)
				}
			}
			el := time.Since(start)
			b.StopTimer()
			st1, _ := vi.Stats()
			drops := st1.RxNoDesc - st0.RxNoDesc
			b.ReportMetric(float64(got)/el.Seconds(), "pkts/s")
			b.ReportMetric(100*float64(drops)/float64(uint64(got)+drops), "%nodesc-drops")
			b.ReportMetric(float64(st1.RxRingFull-st0.RxRingFull), "ringfull-drops")
			b.ReportMetric(float64(st1.RxKicks+st1.TxKicks-st0.RxKicks-st0.TxKicks)/float64(got), "kicks/pkt")
		})
	}
}
