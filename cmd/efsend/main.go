// Command efsend sends UDP datagrams, unicast or multicast, through a
// kube-efvi VI, like ef_vi's efsend: frames are built in the VI's own packet
// buffers, queued in batches with one push per batch, paced to a rate, and
// their completions and TX errors counted. In a pod the VI comes from the
// allocation's socket ($EFVI_SOCKET); on a node, pass -socket.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/efvitool"
	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
)

const usage = `efsend: send UDP through a kube-efvi VI (ef_vi's efsend).

Usage:
  efsend -dst IP:PORT [-dst-mac MAC] [-rate PPS] [-size B] [-count N] [-src-port P]

For a multicast -dst the destination MAC is the group's (01:00:5e:...);
for unicast give the next hop's MAC with -dst-mac (ARP is the application's
job in ef_vi). The source is the pod's IP. Each payload starts with a 64-bit
big-endian sequence number.

Options:
`

type options struct {
	socket  string
	dst     netip.AddrPort
	dstMAC  frame.MAC
	srcPort uint16
	rate    float64
	size    int
	count   uint64
	batch   int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "efsend:", err)
		os.Exit(1)
	}
}

func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("efsend", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&o.socket, "socket", "", "agent broker socket of the allocation (default $"+efvi.EnvSocket+")")
	dst := fs.String("dst", "", "destination `IP:PORT` (unicast or multicast; required)")
	mac := fs.String("dst-mac", "", "next hop's `MAC` (required for unicast; derived for multicast)")
	src := fs.Uint("src-port", 0, "source UDP port (0 = the destination port)")
	fs.Float64Var(&o.rate, "rate", 0, "datagrams per second (0 = as fast as the VI takes them)")
	fs.IntVar(&o.size, "size", 64, "UDP payload `bytes` (8..1472)")
	fs.Uint64Var(&o.count, "count", 0, "datagrams to send (0 = until interrupted)")
	fs.Uint64Var(&o.count, "c", 0, "short for -count")
	fs.IntVar(&o.batch, "batch", 32, "most frames queued per push (1..64)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (see -h)", fs.Arg(0))
	}
	var err error
	if o.dst, err = netip.ParseAddrPort(*dst); err != nil {
		return o, fmt.Errorf("-dst %q: want IP:PORT, e.g. 10.0.0.2:5000 or 239.1.2.3:5000", *dst)
	}
	if o.dst.Port() == 0 {
		return o, fmt.Errorf("-dst %q: port 0 cannot be sent to", *dst)
	}
	o.dst = netip.AddrPortFrom(o.dst.Addr().Unmap(), o.dst.Port())
	if m, ok := efvitool.MulticastMAC(o.dst.Addr()); ok {
		o.dstMAC = m
		if *mac != "" {
			if o.dstMAC, err = efvitool.ParseMAC("-dst-mac", *mac); err != nil {
				return o, err
			}
		}
	} else if o.dstMAC, err = efvitool.ParseMAC("-dst-mac", *mac); err != nil {
		return o, err
	}
	if *src > 65535 {
		return o, fmt.Errorf("-src-port %d: want 0..65535", *src)
	}
	o.srcPort = uint16(*src)
	if o.srcPort == 0 {
		o.srcPort = o.dst.Port()
	}
	if o.size < 8 || o.size > 1472 {
		return o, fmt.Errorf("-size %d: want 8..1472 payload bytes (8 for the sequence number; 1472 fills a 1500-byte MTU)", o.size)
	}
	if o.rate < 0 {
		return o, fmt.Errorf("-rate %v: want >= 0 datagrams per second", o.rate)
	}
	if o.batch < 1 || o.batch > efvi.TransmitBatch {
		return o, fmt.Errorf("-batch %d: want 1..%d", o.batch, efvi.TransmitBatch)
	}
	return o, nil
}

// Totals are what efsend did.
type Totals struct {
	Sent      uint64 // queued and pushed
	Completed uint64 // TX completions
	TxErrors  uint64 // TX_ERROR events
	Elapsed   time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (*Totals, error) {
	o, err := parseArgs(args, stderr)
	if err != nil {
		return nil, err
	}
	s, err := efvitool.Open(ctx, o.socket, 1024)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ip, err := s.PodIP()
	if err != nil {
		return nil, err
	}
	if ip.Is4() != o.dst.Addr().Is4() {
		return nil, fmt.Errorf("-dst %s: the pod's IP %s is of the other family", o.dst, ip)
	}
	flow := frame.UDPFlow{SrcMAC: s.VI.MAC(), DstMAC: o.dstMAC, Src: netip.AddrPortFrom(ip, o.srcPort), Dst: o.dst}
	fmt.Fprintf(stdout, "efsend: VI %d on %s, %s -> %s (%s), %d B payload\n", s.VI.Instance(), s.Info.Interface, flow.Src, flow.Dst, macString(flow.DstMAC), o.size)
	t := &Totals{}
	err = send(ctx, s, o, &flow, t)
	fmt.Fprintf(stdout, "efsend: sent %d, completed %d, tx errors %d in %v (%.0f datagrams/s)\n",
		t.Sent, t.Completed, t.TxErrors, t.Elapsed.Round(time.Millisecond), float64(t.Sent)/max(t.Elapsed.Seconds(), 1e-9))
	return t, err
}

func macString(m frame.MAC) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// send is the send loop: no allocation per datagram.
func send(ctx context.Context, s *efvitool.Session, o options, flow *frame.UDPFlow, t *Totals) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	vi, mem := s.VI, s.Mem
	hl := flow.HeaderLen()
	n := min(mem.NumBufs(), vi.TransmitCapacity())
	for i := 0; i < n; i++ { // payload pattern, written once
		b := mem.Buf(i)[hl : hl+o.size]
		for j := range b {
			b[j] = byte(j)
		}
	}
	pool := efvi.NewBufPool(0, n)
	evs := make([]efvi.Event, 64)
	ids := make([]efvi.RqID, efvi.TransmitBatch)
	start := time.Now()
	defer func() { t.Elapsed = time.Since(start) }()
	var seq uint64
	reap := func() error {
		k := vi.EventQPoll(evs)
		for i := range evs[:k] {
			ev := &evs[i]
			switch ev.Type {
			case efvi.EventTX, efvi.EventTXError:
				for _, id := range ids[:vi.TransmitUnbundle(ev, ids)] {
					pool.Put(int(id))
				}
				if ev.Type == efvi.EventTX {
					t.Completed += uint64(ev.Count)
				} else {
					t.TxErrors++
				}
			case efvi.EventRX, efvi.EventRXDiscard:
				_ = vi.ReceivePost(mem.Addr(int(ev.RqID)), ev.RqID)
			case efvi.EventReset:
				return errors.New("VI reset: the node's data path went away")
			}
		}
		return nil
	}
	for iter := 1; o.count == 0 || seq < o.count; iter++ {
		if iter&0xfff == 0 && ctx.Err() != nil {
			break
		}
		if err := reap(); err != nil {
			return err
		}
		want := o.batch
		if o.count > 0 {
			want = int(min(uint64(want), o.count-seq))
		}
		if o.rate > 0 {
			due := uint64(time.Since(start).Seconds() * o.rate)
			if due <= seq {
				continue
			}
			want = int(min(uint64(want), due-seq))
		}
		queued := 0
		for ; queued < want; queued++ {
			i, ok := pool.Get()
			if !ok {
				break
			}
			b := mem.Buf(i)
			binary.BigEndian.PutUint64(b[hl:], seq)
			l, err := flow.BuildInPlace(b, o.size)
			if err != nil {
				pool.Put(i)
				return fmt.Errorf("build frame: %w", err)
			}
			if err := vi.TransmitInit(mem.Addr(i), l, efvi.RqID(i)); err != nil {
				pool.Put(i) // ring full: try again after reaping
				break
			}
			seq++
		}
		if queued > 0 {
			vi.TransmitPush()
			t.Sent += uint64(queued)
		}
	}
	// Drain: wait (bounded) for the completions of what was sent.
	for deadline := time.Now().Add(2 * time.Second); t.Completed+t.TxErrors < t.Sent && time.Now().Before(deadline); {
		if err := reap(); err != nil {
			return err
		}
	}
	if t.Completed+t.TxErrors < t.Sent {
		return fmt.Errorf("%d of %d datagrams never completed within 2s", t.Sent-t.Completed-t.TxErrors, t.Sent)
	}
	return nil
}
