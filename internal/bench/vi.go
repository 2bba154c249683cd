package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// viBufs is the VI's packet memory in 2 KiB buffers; the first
// ReceiveCapacity of them circulate through the RX ring (and, when echoed,
// the TX ring), the rest is unused headroom.
const viBufs = 8192

// viRig is the whole software VI stack on the port, in this process: the
// agent side (data plane, viservice allocation, broker server) and the pod
// side (SDK driver over the broker socket, a VI with a UDP filter). The data
// path is the one a pod gets: port XDP → veth → XSK, and back with the
// source check on the VI's veth.
type viRig struct {
	plane  *dataplane.Port
	srv    *broker.Server
	cancel context.CancelFunc
	served chan error
	dir    string
	pinDir string
	drv    *efvi.Driver
	vi     *efvi.VI
	mem    *efvi.RegisteredMemory
	evs    []efvi.Event
	stamp  *stamp // when set, RX events are timestamped there (paired run)
	ids    []efvi.RqID
}

// NewVI sets the software VI stack up on topo's port with the filter
// udp:<addr>. Nothing else may own the port's XDP hook meanwhile.
func NewVI(ctx context.Context, topo *Topology, addr netip.AddrPort) (c Contender, err error) {
	r := &viRig{evs: make([]efvi.Event, 64), ids: make([]efvi.RqID, efvi.TransmitBatch)}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	tag := make([]byte, 3)
	_, _ = rand.Read(tag)
	h := hex.EncodeToString(tag)
	if err = dataplane.EnsureBPFFS(dataplane.DefaultBPFFS); err != nil {
		return nil, err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r.pinDir = filepath.Join(dataplane.DefaultBPFFS, "efvb-"+h)
	if r.plane, err = dataplane.Open(ctx, dataplane.PortConfig{Ifname: topo.Port.Name,
		PinDir: r.pinDir, VethPrefix: "eb" + h[:4], Logger: quiet}); err != nil {
		return nil, fmt.Errorf("data plane on %s: %w", topo.Port.Name, err)
	}
	port, err := viservice.NewPort(topo.Port.Name, topo.Port.MAC, 1500, r.plane)
	if err != nil {
		return nil, err
	}
	alloc, err := viservice.NewAllocation("bench", port, []string{topo.Port.Name + "-vi0"}, quiet)
	if err != nil {
		return nil, err
	}
	if err = alloc.SetPolicy(filter.Policy{OwnIPs: []netip.Addr{addr.Addr()}}); err != nil {
		return nil, err
	}
	if r.dir, err = os.MkdirTemp("", "efvb"); err != nil {
		return nil, err
	}
	sock := filepath.Join(r.dir, "broker.sock")
	if r.srv, err = broker.Listen(broker.Config{Path: sock, Sessions: alloc, Authorizer: broker.AllowAny(), Logger: quiet}); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.served = cancel, make(chan error, 1)
	go func() { r.served <- r.srv.Serve(sctx) }()

	if r.drv, err = efvi.DialAgent(ctx, sock); err != nil {
		return nil, err
	}
	pd, err := r.drv.AllocPD(ctx, efvi.PDRequest{VLAN: -1})
	if err != nil {
		return nil, err
	}
	if r.mem, err = pd.RegisterMemory(ctx, viBufs); err != nil {
		return nil, err
	}
	if r.vi, err = pd.AllocVI(ctx, r.mem, efvi.VIRequest{EvqCap: -1, RxqCap: -1, TxqCap: -1}, efvi.Options{}); err != nil {
		return nil, err
	}
	spec, err := filter.Parse("udp:" + addr.String())
	if err != nil {
		return nil, err
	}
	if _, err = r.vi.FilterAdd(ctx, spec); err != nil {
		return nil, fmt.Errorf("filter %s: %w", spec, err)
	}
	for i := 0; i < r.vi.ReceiveCapacity() && i < viBufs; i++ {
		if err = r.vi.ReceiveInit(r.mem.Addr(i), efvi.RqID(i)); err != nil {
			return nil, fmt.Errorf("post RX buffer %d: %w", i, err)
		}
	}
	r.vi.ReceivePush()
	return r, nil
}

func (r *viRig) Name() string { return NameVI }

// Close frees the VI (closing the session frees its filter and socket), stops
// the broker and destroys the data plane.
func (r *viRig) Close() error {
	var errs []error
	if r.drv != nil {
		errs = append(errs, r.drv.Close())
	}
	if r.cancel != nil {
		r.cancel()
		errs = append(errs, r.srv.Close())
		if err := <-r.served; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	if r.plane != nil {
		errs = append(errs, r.plane.Destroy())
	}
	if r.dir != "" {
		errs = append(errs, os.RemoveAll(r.dir))
	}
	return errors.Join(errs...)
}

// echoStep polls the event queue once: RX frames are swapped in place and
// transmitted from the buffer they arrived in (zero copy); a buffer is
// re-posted to the RX ring when its TX completes. It returns how many frames
// it echoed.
func (r *viRig) echoStep() (int, error) {
	vi := r.vi
	k := vi.EventQPoll(r.evs)
	echoed := 0
	for i := range r.evs[:k] {
		ev := &r.evs[i]
		switch ev.Type {
		case efvi.EventRX:
			if r.stamp != nil {
				r.stamp.at.Store(r.stamp.now())
			}
			if swapUDP(vi.RxFrame(ev)) && vi.TransmitInit(ev.Addr, int(ev.Len), ev.RqID) == nil {
				echoed++
				continue
			}
			_ = vi.ReceiveInit(r.mem.Addr(int(ev.RqID)), ev.RqID)
		case efvi.EventRXDiscard:
			_ = vi.ReceiveInit(r.mem.Addr(int(ev.RqID)), ev.RqID)
		case efvi.EventTX, efvi.EventTXError:
			for _, id := range r.ids[:vi.TransmitUnbundle(ev, r.ids)] {
				_ = vi.ReceiveInit(r.mem.Addr(int(id)), id)
			}
		case efvi.EventReset:
			return echoed, errors.New("VI reset: the data path went away")
		}
	}
	if k > 0 {
		vi.TransmitPush()
		vi.ReceivePush()
	}
	return echoed, nil
}

// stampedEchoStep is echoStep that records in s when a frame arrived.
func (r *viRig) stampedEchoStep(s *stamp) error {
	r.stamp = s
	_, err := r.echoStep()
	return err
}

func (r *viRig) Echo(ctx context.Context) error {
	for polls := 0; ; polls++ {
		n, err := r.echoStep()
		if err != nil {
			return err
		}
		if n == 0 && polls&emptyPollsPerCtx == 0 && ctx.Err() != nil {
			return nil
		}
	}
}

// Sink counts RX events and re-posts each batch's buffers at once (the
// polling policy of pkg/efvi: keep the RX ring full).
func (r *viRig) Sink(ctx context.Context, cnt *atomic.Uint64) error {
	vi := r.vi
	for polls := 0; ; polls++ {
		k := vi.EventQPoll(r.evs)
		if k == 0 {
			if polls&emptyPollsPerCtx == 0 && ctx.Err() != nil {
				return nil
			}
			continue
		}
		got := 0
		for i := range r.evs[:k] {
			ev := &r.evs[i]
			switch ev.Type {
			case efvi.EventRX, efvi.EventRXDiscard:
				got++
				_ = vi.ReceiveInit(r.mem.Addr(int(ev.RqID)), ev.RqID)
			case efvi.EventReset:
				return errors.New("VI reset: the data path went away")
			}
		}
		vi.ReceivePush()
		cnt.Add(uint64(got))
	}
}
