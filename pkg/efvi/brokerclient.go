package efvi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
)

// EnvSocket names the environment variable the agent sets in a container to
// the path of its per-allocation broker socket.
const EnvSocket = "EFVI_SOCKET"

// DialRetry bounds how long DialAgent keeps trying a socket that is missing
// (ENOENT) or refuses connections (ECONNREFUSED): what a pod sees while the
// agent restarts (an upgrade, a crash), when the old agent has let the
// socket go and the new one is not listening yet. ctx's deadline, if
// sooner, wins.
const DialRetry = 30 * time.Second

// DialAgent connects to the node agent for this allocation and returns a
// Driver. With path "" the backend comes from the environment
// (SelectBackend): a software pool's broker socket ($EFVI_SOCKET), or a
// hardware pool's cluster socket and name ($EF_VI_CLUSTER_SOCKET,
// $EFVI_CLUSTER), so the same pod code runs on either. A non-empty path is
// a software broker socket. This is how an unprivileged pod opens ef_vi: the
// agent creates the privileged objects and passes them over the socket.
// Across an agent restart a software dial retries for up to DialRetry (see
// there); any other error returns at once.
func DialAgent(ctx context.Context, path string) (*Driver, error) {
	if path == "" {
		sel, err := SelectBackend(os.Getenv)
		if err != nil {
			return nil, err
		}
		if sel.Kind == BackendHardware {
			return dialHardware(ctx, sel)
		}
		path = sel.BrokerSocket
	}
	c, err := dialRetry(ctx, path, DialRetry, func(ctx context.Context, path string) (*broker.Client, error) {
		return broker.Dial(ctx, path, broker.WithName(os.Args[0]))
	})
	if err != nil {
		return nil, fmt.Errorf("efvi: connect to agent at %s: %w", path, err)
	}
	d, err := Open(&brokerBackend{c: c})
	if err != nil {
		c.Close()
		return nil, err
	}
	h := c.Hello()
	d.info = AllocationInfo{Pool: h.Pool, Interface: h.IfName, MAC: h.MAC, MTU: int(h.MTU), Devices: h.Devices, Addrs: h.Addrs}
	return d, nil
}

// AllocationInfo is what the agent says about the allocation at connect time.
type AllocationInfo struct {
	Pool      string
	Interface string  // the port on the node
	MAC       [6]byte // the port's MAC: the source MAC for frames the VI sends
	MTU       int
	Devices   []string     // allocated VI slots, as in $EFVI_DEVICES
	Addrs     []netip.Addr // the pod's own IPs: the only sources TX may use
}

// Info returns what the agent said about the allocation (zero for backends
// that are not the agent).
func (d *Driver) Info() AllocationInfo { return d.info }

// brokerBackend is the software backend's control plane: the broker client.
type brokerBackend struct {
	c    *broker.Client
	mems map[MemoryHandle]broker.MemRegion
}

func (b *brokerBackend) AllocPD(ctx context.Context, req PDRequest) (PDHandle, error) {
	if req.Interface != "" && req.Interface != b.c.Hello().IfName && req.Interface != b.c.Hello().Pool {
		return 0, fmt.Errorf("interface %q: this allocation is on port %s (pool %s)", req.Interface, b.c.Hello().IfName, b.c.Hello().Pool)
	}
	if req.VLAN >= 0 {
		return 0, errors.New("vport (ef_pd_alloc_with_vport) is not supported by the software backend: use a VLAN filter (udp:vid=N,...)")
	}
	id, err := b.c.AllocPD(ctx, req.Flags)
	return PDHandle(id), err
}

func (b *brokerBackend) RegisterMemory(ctx context.Context, pd PDHandle, nbufs int) (MemoryGrant, error) {
	if nbufs <= 0 {
		return MemoryGrant{}, fmt.Errorf("%d buffers: want at least 1", nbufs)
	}
	r, err := b.c.RegisterMemory(ctx, broker.PDID(pd), uint64(nbufs)*xsk.DefaultFrameSize)
	if err != nil {
		return MemoryGrant{}, err
	}
	if b.mems == nil {
		b.mems = map[MemoryHandle]broker.MemRegion{}
	}
	b.mems[MemoryHandle(r.ID)] = broker.MemRegion{ID: r.ID, ChunkSize: r.ChunkSize, Size: r.Size}
	return MemoryGrant{Handle: MemoryHandle(r.ID), File: r.File, NumBufs: int(r.Size / uint64(r.ChunkSize)), BufSize: int(r.ChunkSize)}, nil
}

func (b *brokerBackend) AllocVI(ctx context.Context, pd PDHandle, mem MemoryHandle, req VIRequest) (VIGrant, error) {
	m, ok := b.mems[mem]
	if !ok {
		return VIGrant{}, fmt.Errorf("memory region %d is not registered in this session", mem)
	}
	v, err := b.c.AllocVI(ctx, broker.AllocVIRequest{
		PD: broker.PDID(pd), MemReg: broker.MemRegID(mem),
		EvqCap: int32(req.EvqCap), RxqCap: int32(req.RxqCap), TxqCap: int32(req.TxqCap), Flags: req.Flags,
	})
	if err != nil {
		return VIGrant{}, err
	}
	h := b.c.Hello()
	return VIGrant{
		Handle: VIHandle(v.ID),
		File:   v.File,
		Geometry: xsk.Geometry{
			FrameSize: v.FrameSize, Headroom: v.Headroom, NumFrames: uint32(m.Size / uint64(v.FrameSize)),
			RxSize: v.RxSize, TxSize: v.TxSize, FillSize: v.FillSize, CompSize: v.CompSize, QueueID: v.QueueID,
		},
		Instance: int(v.ID),
		MAC:      h.MAC,
		MTU:      int(h.MTU),
	}, nil
}

func (b *brokerBackend) FilterAdd(ctx context.Context, vi VIHandle, spec filter.Spec) (FilterCookie, error) {
	c, err := b.c.FilterAdd(ctx, broker.VIID(vi), spec.String(), uint32(spec.Flags))
	return FilterCookie(c), err
}

func (b *brokerBackend) FilterDel(ctx context.Context, vi VIHandle, cookie FilterCookie) error {
	return b.c.FilterDel(ctx, broker.VIID(vi), broker.FilterCookie(cookie))
}

func (b *brokerBackend) VIStats(ctx context.Context, vi VIHandle) (map[string]uint64, error) {
	st, err := b.c.Stats(ctx, broker.VIID(vi), false)
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(st))
	for _, s := range st {
		out[s.Name] = s.Value
	}
	return out, nil
}

func (b *brokerBackend) FreeVI(ctx context.Context, vi VIHandle) error {
	return b.c.FreeVI(ctx, broker.VIID(vi))
}

func (b *brokerBackend) FreeMemory(ctx context.Context, mem MemoryHandle) error {
	delete(b.mems, mem)
	return b.c.FreeMem(ctx, broker.MemRegID(mem))
}

func (b *brokerBackend) FreePD(ctx context.Context, pd PDHandle) error {
	return b.c.FreePD(ctx, broker.PDID(pd))
}

func (b *brokerBackend) Close() error { return b.c.Close() }

// dialRetry calls dial until it succeeds, fails with an error other than
// ENOENT/ECONNREFUSED, or bound (or ctx) ends; waits grow from 10 ms to
// 500 ms.
func dialRetry(ctx context.Context, path string, bound time.Duration, dial func(context.Context, string) (*broker.Client, error)) (*broker.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	wait := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c, err := dial(ctx, path)
		if err == nil || !(errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)) {
			return c, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (the agent did not come back: %d attempts in %v; is the kube-efvi agent running on this node?)", err, attempt, bound)
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}
