package bench

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
)

// Generator geometry: the first genRx chunks of its UMEM are RX buffers
// (kept on the fill ring), the next genTx chunks TX buffers.
const (
	genRx     = 2048
	genTx     = 2048
	genFrames = genRx + genTx
	chunk     = xsk.DefaultFrameSize
)

// Generator is the load generator every contender is measured with: a raw
// AF_XDP socket (copy mode) on the fabric end of the wire, queue 0, fed by an
// XDP program that redirects IPv4 to it and passes the rest (ARP) to the
// fabric kernel. The program also satisfies veth's rule that frames
// redirected towards the wire need an XDP program there. It sends UDP from
// src to dst with the port's MAC as destination, and receives whatever IPv4
// comes back. One goroutine drives it; its data path makes no allocation.
type Generator struct {
	*rawSocket
	flow   frame.UDPFlow
	txFree []uint64 // free TX chunk addresses (stack)
	// Timeout bounds one Ping.
	Timeout time.Duration
	pkt     frame.Packet
}

// NewGenerator builds the generator on topo's wire, sending from
// FabricIP:srcPort to dst.
func NewGenerator(topo *Topology, srcPort uint16, dst netip.AddrPort) (g *Generator, err error) {
	g = &Generator{Timeout: 2 * time.Second,
		flow: frame.UDPFlow{SrcMAC: frame.MAC(topo.Wire.MAC), DstMAC: frame.MAC(topo.Port.MAC),
			Src: netip.AddrPortFrom(topo.FabricIP, srcPort), Dst: dst}}
	if g.rawSocket, err = openRawSocket(rawSocketConfig{name: "gen", ns: topo.Fabric, ifindex: topo.Wire.Index,
		ifname: topo.Wire.Name, frames: genFrames, rx: genRx, tx: genTx, txBudget: 256}); err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	g.txFree = make([]uint64, 0, genTx)
	for i := uint32(genRx); i < genFrames; i++ {
		g.txFree = append(g.txFree, uint64(i)*chunk)
	}
	return g, nil
}

// Close detaches the program and frees the socket and its memory.
func (g *Generator) Close() error {
	if g.rawSocket == nil {
		return nil
	}
	return g.rawSocket.Close()
}

// reap returns completed TX chunks to the free list.
func (g *Generator) reap() uint32 {
	idx, n := g.rings.Comp.Peek(genTx)
	for i := uint32(0); i < n; i++ {
		g.txFree = append(g.txFree, g.rings.Comp.Get(idx+i)&^(chunk-1))
	}
	g.rings.Comp.Release(n)
	return n
}

// Send transmits one datagram carrying payload and kicks the kernel.
func (g *Generator) Send(payload []byte) error {
	if len(g.txFree) == 0 && g.reap() == 0 {
		return errors.New("generator: every TX buffer is in flight")
	}
	addr := g.txFree[len(g.txFree)-1]
	n, err := g.flow.Build(g.rings.UMEM[addr:addr+chunk], payload)
	if err != nil {
		return fmt.Errorf("build ping: %w", err)
	}
	idx, ok := g.rings.Tx.Reserve(1)
	if !ok {
		return errors.New("generator: TX ring full")
	}
	g.txFree = g.txFree[:len(g.txFree)-1]
	g.rings.Tx.Set(idx, addr, uint32(n), 0)
	g.rings.Tx.Submit()
	if err := kickTx(g.rings.FD); err != nil {
		return err
	}
	return nil
}

// Recv waits for the next IPv4 frame, checks it is the UDP echo of want
// (from dst to the generator's source, payload equal), recycles its buffer
// and reports when it was seen. Frames that are not UDP between the two
// endpoints are skipped.
func (g *Generator) Recv(want []byte, t0 time.Time) (time.Duration, error) {
	for polls := 0; ; polls++ {
		idx, n := g.rings.Rx.Peek(1)
		if n == 0 {
			if polls&0x3ff == 0x3ff && time.Since(t0) > g.Timeout {
				return 0, fmt.Errorf("no echo within %v", g.Timeout)
			}
			continue
		}
		rtt := time.Since(t0)
		d := g.rings.Rx.Get(idx)
		addr, ln := d.Addr, d.Len
		g.rings.Rx.Release(1)
		b := g.rings.UMEM[addr : addr+uint64(ln)]
		err := frame.Parse(b, &g.pkt)
		match := err == nil && g.pkt.Proto == 17 && g.pkt.Src == g.flow.Dst.Addr() && g.pkt.SrcPort == g.flow.Dst.Port() &&
			g.pkt.Dst == g.flow.Src.Addr() && g.pkt.DstPort == g.flow.Src.Port()
		var bad error
		if match && !bytes.Equal(g.pkt.Payload(b), want) {
			bad = fmt.Errorf("echo payload of %d bytes differs from the %d sent", len(g.pkt.Payload(b)), len(want))
		} else if match && (g.pkt.DstMAC != g.flow.SrcMAC || g.pkt.SrcMAC != g.flow.DstMAC) {
			bad = fmt.Errorf("echo MACs %v <- %v, want %v <- %v", g.pkt.DstMAC, g.pkt.SrcMAC, g.flow.SrcMAC, g.flow.DstMAC)
		}
		if fi, ok := g.rings.Fill.Reserve(1); ok {
			g.rings.Fill.Set(fi, addr&^(chunk-1))
			g.rings.Fill.Submit()
		}
		g.reap()
		if bad != nil {
			return 0, bad
		}
		if match {
			return rtt, nil
		}
	}
}

// Ping implements latency.Pinger.
func (g *Generator) Ping(payload []byte) (time.Duration, error) {
	t0 := time.Now()
	if err := g.Send(payload); err != nil {
		return 0, err
	}
	return g.Recv(payload, t0)
}

// Flood transmits frames with payload bytes of UDP payload as fast as it can
// for window and returns how many the kernel took off the TX ring (a frame
// the wire dropped is counted: it was sent) and for how long it sent.
// Received frames (there should be none) are recycled.
func (g *Generator) Flood(payload int, window time.Duration) (sent uint64, took time.Duration, err error) {
	zero := make([]byte, payload)
	for len(g.txFree) < genTx {
		if g.reap() == 0 {
			if err := kickTx(g.rings.FD); err != nil {
				return 0, 0, err
			}
		}
	}
	var flen int
	for _, a := range g.txFree {
		if flen, err = g.flow.Build(g.rings.UMEM[a:a+chunk], zero); err != nil {
			return 0, 0, fmt.Errorf("build flood frame: %w", err)
		}
	}
	start := time.Now()
	end := start.Add(window)
	const batch = 64
	for i := 0; ; i++ {
		sent += uint64(g.reap())
		if i&0xf == 0 && time.Now().After(end) {
			break
		}
		k := uint32(min(batch, len(g.txFree)))
		if k > 0 {
			if idx, ok := g.rings.Tx.Reserve(k); ok {
				for j := uint32(0); j < k; j++ {
					g.rings.Tx.Set(idx+j, g.txFree[len(g.txFree)-1], uint32(flen), 0)
					g.txFree = g.txFree[:len(g.txFree)-1]
				}
				g.rings.Tx.Submit()
			}
		}
		if err := kickTx(g.rings.FD); err != nil {
			return sent, time.Since(start), err
		}
		g.drainRx()
	}
	took = time.Since(start)
	// What is still on the TX ring goes out now; count it too.
	for deadline := time.Now().Add(time.Second); len(g.txFree) < genTx && time.Now().Before(deadline); {
		n := g.reap()
		sent += uint64(n)
		if n == 0 {
			_ = xsk.KickTx(g.rings.FD)
		}
		g.drainRx()
	}
	return sent, took, nil
}

// drainRx recycles received frames without looking at them.
func (g *Generator) drainRx() {
	idx, n := g.rings.Rx.Peek(genRx)
	if n == 0 {
		return
	}
	fi, ok := g.rings.Fill.Reserve(n)
	for i := uint32(0); i < n; i++ {
		if ok {
			g.rings.Fill.Set(fi+i, g.rings.Rx.Get(idx+i).Addr&^(chunk-1))
		}
	}
	g.rings.Rx.Release(n)
	if ok {
		g.rings.Fill.Submit()
	}
}

// kickTx kicks an XSK's TX ring; EAGAIN, EBUSY and ENOBUFS only mean "kick
// again later" (EBUSY is also what a frame the veth dropped reports).
func kickTx(fd int) error {
	switch e := xsk.KickTx(fd); e {
	case 0, unix.EAGAIN, unix.EBUSY, unix.ENOBUFS, unix.EINTR:
		return nil
	default:
		return fmt.Errorf("TX kick: %w", e)
	}
}
