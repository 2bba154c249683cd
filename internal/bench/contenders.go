package bench

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/kube-efvi/kube-efvi/internal/latency"
	"golang.org/x/sys/unix"
)

// Contender names, as they appear in the table.
const (
	NameVI           = "kube-efvi VI"
	NameRawXDP       = "raw AF_XDP"
	NameKernelSpin   = "kernel UDP spin"
	NameKernelBlock  = "kernel UDP blocking"
	emptyPollsPerCtx = 0xfff // empty polls between context checks
)

// Contender is one node-side receiver on the port. Echo and Sink run on a
// goroutine the caller has locked to its thread; each returns when ctx ends.
type Contender interface {
	Name() string
	// Echo answers every UDP datagram to its sender.
	Echo(ctx context.Context) error
	// Sink counts received datagrams into n without answering.
	Sink(ctx context.Context, n *atomic.Uint64) error
	Close() error
}

// swapUDP turns a received untagged IPv4/UDP frame into its reply in place:
// MACs, IP addresses and ports swap. Swapping 16-bit words keeps every
// one's-complement checksum valid, so none is recomputed (the load generator
// sends complete checksums). It reports false for anything else.
func swapUDP(b []byte) bool {
	if len(b) < 42 || b[12] != 0x08 || b[13] != 0x00 || b[14]>>4 != 4 || b[23] != 17 {
		return false
	}
	l4 := 14 + int(b[14]&0xf)*4
	if len(b) < l4+8 {
		return false
	}
	for i := 0; i < 6; i++ {
		b[i], b[6+i] = b[6+i], b[i]
	}
	for i := 26; i < 30; i++ {
		b[i], b[i+4] = b[i+4], b[i]
	}
	b[l4], b[l4+1], b[l4+2], b[l4+3] = b[l4+2], b[l4+3], b[l4], b[l4+1]
	return true
}

// kernelUDP is a kernel UDP socket on the port's IP, bound for the
// contender's lifetime (so no datagram meets a closed port between runs).
type kernelUDP struct {
	fd   int
	spin bool
}

// NewKernelUDP is the kernel UDP contender on addr: spin selects a
// busy-polling reader (MSG_DONTWAIT), otherwise a blocking one.
func NewKernelUDP(addr netip.AddrPort, spin bool) (Contender, error) {
	fd, err := latency.UDPSocket(addr, !spin)
	if err != nil {
		return nil, err
	}
	return &kernelUDP{fd: fd, spin: spin}, nil
}

func (k *kernelUDP) Name() string {
	if k.spin {
		return NameKernelSpin
	}
	return NameKernelBlock
}

func (k *kernelUDP) Echo(ctx context.Context) error { return latency.UDPEchoFD(ctx, k.fd, k.spin) }

// Sink reads with recvmmsg, 64 datagrams per call: MSG_DONTWAIT in a spin
// loop, or MSG_WAITFORONE (block for the first, take what else is queued).
func (k *kernelUDP) Sink(ctx context.Context, n *atomic.Uint64) error {
	fd := k.fd
	const batch = 64
	bufs := make([]byte, batch*2048)
	iov := make([]unix.Iovec, batch)
	msgs := make([]unix.Mmsghdr, batch)
	for i := range msgs {
		iov[i].Base = &bufs[i*2048]
		iov[i].SetLen(2048)
		msgs[i].Hdr.Iov = &iov[i]
		msgs[i].Hdr.SetIovlen(1)
	}
	flags := uintptr(unix.MSG_DONTWAIT)
	if !k.spin {
		flags = unix.MSG_WAITFORONE
	}
	for polls := 0; ; polls++ {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), batch, flags, 0, 0)
		switch e {
		case 0:
			n.Add(uint64(r))
			continue
		case unix.EAGAIN, unix.EINTR:
			if (!k.spin || polls&emptyPollsPerCtx == 0) && ctx.Err() != nil {
				return nil
			}
		default:
			return fmt.Errorf("recvmmsg: %w", e)
		}
	}
}

func (k *kernelUDP) Close() error { return unix.Close(k.fd) }

// rawXSK is a plain AF_XDP socket on the port's queue 0, fed by an XDP
// program on the port that redirects every IPv4 frame to it: what a team
// would write by hand without kube-efvi. Its rings match a VI's defaults.
type rawXSK struct {
	*rawSocket
}

const (
	rawFrames = 8192
	rawRx     = 4096
	rawTx     = 1024
)

// NewRawXSK attaches the redirect program to the port and binds a socket to
// its queue 0. Nothing else may own the port's XDP hook meanwhile.
func NewRawXSK(topo *Topology) (Contender, error) {
	rs, err := openRawSocket(rawSocketConfig{name: "raw", ifindex: topo.Port.Index, ifname: topo.Port.Name,
		frames: rawFrames, rx: rawRx, tx: rawTx})
	if err != nil {
		return nil, fmt.Errorf("raw AF_XDP: %w", err)
	}
	return &rawXSK{rs}, nil
}

func (r *rawXSK) Name() string { return NameRawXDP }

// Echo: RX descriptors are swapped in place and put on the TX ring as they
// are (zero copy), one kick per batch; completions go back to the fill ring.
func (r *rawXSK) Echo(ctx context.Context) error {
	defer r.drain()
	for polls := 0; ; polls++ {
		busy, err := r.echoStep(nil)
		if err != nil {
			return err
		}
		if !busy && polls&emptyPollsPerCtx == 0 && ctx.Err() != nil {
			return nil
		}
	}
}

// stampedEchoStep is echoStep that records in s when a frame arrived.
func (r *rawXSK) stampedEchoStep(s *stamp) error {
	_, err := r.echoStep(s)
	return err
}

// echoStep polls the rings once; it reports whether there was work.
func (r *rawXSK) echoStep(s *stamp) (busy bool, err error) {
	rg := r.rings
	if idx, n := rg.Rx.Peek(64); n > 0 {
		busy = true
		if s != nil {
			s.at.Store(s.now())
		}
		tidx, ok := rg.Tx.Reserve(n)
		var sent uint32
		for i := uint32(0); i < n; i++ {
			d := rg.Rx.Get(idx + i)
			if ok && swapUDP(rg.UMEM[d.Addr:d.Addr+uint64(d.Len)]) {
				rg.Tx.Set(tidx+sent, d.Addr, d.Len, 0)
				sent++
				continue
			}
			if fi, fok := rg.Fill.Reserve(1); fok {
				rg.Fill.Set(fi, d.Addr&^(chunk-1))
			}
		}
		rg.Rx.Release(n)
		rg.Fill.Submit()
		if ok {
			rg.Tx.Cancel(n - sent)
			rg.Tx.Submit()
			if err := kickTx(rg.FD); err != nil {
				return busy, fmt.Errorf("raw XSK echo: %w", err)
			}
		}
	}
	if idx, n := rg.Comp.Peek(rawTx); n > 0 {
		busy = true
		r.recycleComp(idx, n)
	}
	return busy, nil
}

// recycleRx gives n peeked RX descriptors' chunks back to the fill ring.
func (r *rawXSK) recycleRx(idx, n uint32) {
	rg := r.rings
	if fi, ok := rg.Fill.Reserve(n); ok {
		for i := uint32(0); i < n; i++ {
			rg.Fill.Set(fi+i, rg.Rx.Get(idx+i).Addr&^(chunk-1))
		}
		rg.Fill.Submit()
	}
	rg.Rx.Release(n)
}

// recycleComp gives n peeked completions' chunks back to the fill ring.
func (r *rawXSK) recycleComp(idx, n uint32) {
	rg := r.rings
	if fi, ok := rg.Fill.Reserve(n); ok {
		for i := uint32(0); i < n; i++ {
			rg.Fill.Set(fi+i, rg.Comp.Get(idx+i)&^(chunk-1))
		}
		rg.Fill.Submit()
	}
	rg.Comp.Release(n)
}

// Sink counts RX descriptors and gives their chunks straight back.
func (r *rawXSK) Sink(ctx context.Context, cnt *atomic.Uint64) error {
	defer r.drain()
	for polls := 0; ; polls++ {
		idx, n := r.rings.Rx.Peek(256)
		if n == 0 {
			if polls&emptyPollsPerCtx == 0 && ctx.Err() != nil {
				return nil
			}
			continue
		}
		r.recycleRx(idx, n)
		cnt.Add(uint64(n))
	}
}

// drain recycles what arrived after the loop stopped, so every chunk is back
// on the fill ring for the next run.
func (r *rawXSK) drain() {
	for {
		idx, n := r.rings.Rx.Peek(rawRx)
		c, m := r.rings.Comp.Peek(rawTx)
		if n == 0 && m == 0 {
			return
		}
		r.recycleRx(idx, n)
		r.recycleComp(c, m)
	}
}

// pinThread locks the calling goroutine to its thread and, when cpu >= 0,
// that thread to cpu. The caller never unlocks: the thread exits with its
// goroutine, so the affinity does not leak into the Go scheduler's pool.
func pinThread(cpu int) error {
	runtime.LockOSThread()
	if cpu < 0 {
		return nil
	}
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to CPU %d: %w", cpu, err)
	}
	return nil
}
