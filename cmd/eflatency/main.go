// Command eflatency measures UDP round-trip latency the way ef_vi's
// eflatency does: one side pongs, the other pings and prints mean, min, 50,
// 95, 99 and max RTT. The pong side and the VI ping side run on a kube-efvi
// VI through pkg/efvi (in a pod: through $EFVI_SOCKET); `ping --kernel` uses
// a kernel UDP socket, to run on a node or in a namespace without a VI.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/efvitool"
	"github.com/kube-efvi/kube-efvi/internal/latency"
	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

const usage = `eflatency: UDP ping-pong latency over a kube-efvi VI (ef_vi's eflatency).

Usage:
  eflatency pong [-port 8080] [-socket PATH]
      Receive on a VI (filter udp:<pod IP>:<port>) and echo every datagram back
      through the VI. Runs until interrupted.
  eflatency ping -dst IP:PORT -dst-mac MAC [-n 100000] [-w 10000] [-s 32] [-socket PATH]
  eflatency ping -dst IP:PORT -kernel [-bind IP:PORT] [-n ...]
      Send -n pings (after -w warm-ups) of -s payload bytes and print RTT
      mean/min/50/95/99/max in microseconds. Over a VI it needs the next
      hop's MAC (ARP is the application's job in ef_vi); -kernel uses a
      busy-polling kernel UDP socket instead, e.g. from a fabric namespace.

In a pod, the VI comes from the allocation's socket ($EFVI_SOCKET); on a
node, pass the allocation's broker socket with -socket.
`

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Print(usage)
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "pong":
		err = pong(ctx, os.Args[2:])
	case "ping":
		err = ping(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q: want ping or pong (see --help)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "eflatency:", err)
		os.Exit(1)
	}
}

func pong(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pong", flag.ContinueOnError)
	port := fs.Uint("port", 8080, "UDP port to answer on (on the pod's own IP)")
	socket := fs.String("socket", "", "agent broker socket of the allocation (default $"+efvi.EnvSocket+")")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := efvitool.Open(ctx, *socket, 4096)
	if err != nil {
		return err
	}
	defer s.Close()
	vi, mem, info := s.VI, s.Mem, s.Info
	ip, err := s.PodIP()
	if err != nil {
		return err
	}
	spec, err := filter.ParseWithDefaultHost(fmt.Sprintf("udp:%d", *port), ip)
	if err != nil {
		return err
	}
	// RX buffers go in before the filter steers traffic here: a frame that
	// finds the ring empty is dropped.
	n := mem.NumBufs()
	for i := 0; i < n && i < vi.ReceiveCapacity(); i++ {
		if err := vi.ReceiveInit(mem.Addr(i), efvi.RqID(i)); err != nil {
			break
		}
	}
	vi.ReceivePush()
	if err := s.AddFilter(ctx, spec, os.Stderr); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("filter %s: %w", spec, err)
	}
	fmt.Printf("eflatency pong: %s on VI %d (port %s), ready\n", spec, vi.Instance(), info.Interface)
	return echoLoop(ctx, vi, mem)
}

// echoLoop answers every UDP frame by swapping its addresses in place and
// transmitting the same buffer; the buffer is re-posted when its TX
// completes. The caller has posted the RX buffers.
func echoLoop(ctx context.Context, vi efvi.VirtualInterface, mem *efvi.RegisteredMemory) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	evs := make([]efvi.Event, 64)
	ids := make([]efvi.RqID, efvi.TransmitBatch)
	var p frame.Packet
	for polls := 0; ; polls++ {
		k := vi.EventQPoll(evs)
		if k == 0 {
			if polls&0xfffff == 0 && ctx.Err() != nil {
				return nil
			}
			continue
		}
		for i := range evs[:k] {
			ev := &evs[i]
			switch ev.Type {
			case efvi.EventRX:
				b := vi.RxFrame(ev)
				if frame.Parse(b, &p) != nil || p.Proto != 17 {
					_ = vi.ReceivePost(mem.Addr(int(ev.RqID)), ev.RqID)
					continue
				}
				efvitool.SwapUDP(b, &p)
				off := efvi.Addr(ev.Addr)
				if err := vi.TransmitInit(off, len(b), ev.RqID); err != nil {
					_ = vi.ReceivePost(mem.Addr(int(ev.RqID)), ev.RqID)
				}
			case efvi.EventRXDiscard:
				_ = vi.ReceivePost(mem.Addr(int(ev.RqID)), ev.RqID)
			case efvi.EventTX, efvi.EventTXError:
				for _, id := range ids[:vi.TransmitUnbundle(ev, ids)] {
					_ = vi.ReceiveInit(mem.Addr(int(id)), id)
				}
				vi.ReceivePush()
			case efvi.EventReset:
				return errors.New("VI reset: the node's data path went away")
			}
		}
		vi.TransmitPush()
	}
}

func ping(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ping", flag.ContinueOnError)
	dst := fs.String("dst", "", "pong address IP:PORT (required)")
	n := fs.Int("n", 100000, "measured round trips")
	w := fs.Int("w", 10000, "warm-up round trips")
	size := fs.Int("s", 32, "UDP payload bytes")
	kernel := fs.Bool("kernel", false, "use a kernel UDP socket instead of a VI")
	bind := fs.String("bind", "", "local IP:PORT for -kernel (default: any)")
	dstMAC := fs.String("dst-mac", "", "next hop's MAC towards -dst (VI pinger)")
	socket := fs.String("socket", "", "agent broker socket of the allocation, VI pinger (default $"+efvi.EnvSocket+")")
	if err := fs.Parse(args); err != nil {
		return err
	}
	to, err := netip.ParseAddrPort(*dst)
	if err != nil {
		return fmt.Errorf("-dst %q: want IP:PORT: %w", *dst, err)
	}
	if *n < 1 || *w < 0 || *size < 1 || *size > 1472 {
		return fmt.Errorf("-n %d -w %d -s %d: want n >= 1, w >= 0, 1 <= s <= 1472", *n, *w, *size)
	}
	var p latency.Pinger
	how := "kernel UDP pinger"
	if *kernel {
		local := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		if *bind != "" {
			if local, err = netip.ParseAddrPort(*bind); err != nil {
				return fmt.Errorf("-bind %q: %w", *bind, err)
			}
		}
		if p, err = latency.NewUDPPinger(local, to, 2*time.Second); err != nil {
			return err
		}
	} else {
		mac, err := efvitool.ParseMAC("-dst-mac", *dstMAC)
		if err != nil {
			return err
		}
		if p, err = newVIPinger(ctx, *socket, to, mac); err != nil {
			return err
		}
		how = "VI pinger"
	}
	defer p.Close()
	lat, err := latency.MeasureRTT(p, *size, *w, *n)
	if err != nil {
		return err
	}
	us := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e3) }
	fmt.Printf("# eflatency ping %s, %d B payload, %d round trips (after %d warm-ups), %s\n", to, *size, lat.N, *w, how)
	fmt.Println("mean_us\tmin_us\tp50_us\tp95_us\tp99_us\tmax_us")
	fmt.Printf("%s\t%s\t%s\t%s\t%s\t%s\n", us(lat.Mean), us(lat.Min), us(lat.P50), us(lat.P95), us(lat.P99), us(lat.Max))
	return nil
}

// viPinger pings over a VI: one TX buffer, replies stolen by a filter on
// the pod's own IP and an ephemeral port.
type viPinger struct {
	s    *efvitool.Session
	vi   efvi.VirtualInterface
	mem  *efvi.RegisteredMemory
	flow frame.UDPFlow
	evs  []efvi.Event
	ids  []efvi.RqID
	txID efvi.RqID
}

func newVIPinger(ctx context.Context, socket string, to netip.AddrPort, dstMAC frame.MAC) (*viPinger, error) {
	s, err := efvitool.Open(ctx, socket, 1024)
	if err != nil {
		return nil, err
	}
	vi, mem, info := s.VI, s.Mem, s.Info
	ip, err := s.PodIP()
	if err != nil {
		s.Close()
		return nil, err
	}
	src := netip.AddrPortFrom(ip, 40000+uint16(os.Getpid()%20000))
	spec, err := filter.ParseWithDefaultHost(fmt.Sprintf("udp:%d", src.Port()), src.Addr())
	if err == nil {
		err = s.AddFilter(ctx, spec, os.Stderr)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("reply filter: %w", err)
	}
	rx := mem.NumBufs() - 1
	for i := 0; i < rx && i < vi.ReceiveCapacity(); i++ {
		_ = vi.ReceiveInit(mem.Addr(i), efvi.RqID(i))
	}
	vi.ReceivePush()
	return &viPinger{s: s, vi: vi, mem: mem, evs: make([]efvi.Event, 64), ids: make([]efvi.RqID, efvi.TransmitBatch),
		txID: efvi.RqID(rx), flow: frame.UDPFlow{SrcMAC: info.MAC, DstMAC: dstMAC, Src: src, Dst: to}}, nil
}

// Ping implements latency.Pinger.
func (p *viPinger) Ping(payload []byte) (time.Duration, error) {
	buf := p.mem.Buf(int(p.txID))
	t0 := time.Now()
	n, err := p.flow.Build(buf, payload)
	if err != nil {
		return 0, err
	}
	if err := p.vi.Transmit(p.mem.Addr(int(p.txID)), n, p.txID); err != nil {
		return 0, err
	}
	for polls := 0; ; polls++ {
		k := p.vi.EventQPoll(p.evs)
		for i := range p.evs[:k] {
			ev := &p.evs[i]
			switch ev.Type {
			case efvi.EventRX, efvi.EventRXDiscard:
				_ = p.vi.ReceivePost(p.mem.Addr(int(ev.RqID)), ev.RqID)
				if ev.Type == efvi.EventRX {
					return time.Since(t0), nil
				}
			case efvi.EventTX:
				p.vi.TransmitUnbundle(ev, p.ids)
			case efvi.EventReset:
				return 0, errors.New("VI reset")
			}
		}
		if polls&0x3ff == 0 && time.Since(t0) > 2*time.Second {
			return 0, errors.New("no reply within 2s")
		}
	}
}

// Close implements latency.Pinger.
func (p *viPinger) Close() error { return p.s.Close() }
