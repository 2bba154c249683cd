// Command efsink receives frames on a kube-efvi VI with any ef_vi filter
// spec, like ef_vi's efsink: it counts them per filter, optionally dumps
// them in hex, and busy-polls or blocks (ef_eventq_wait) between events. In a
// pod the VI comes from the allocation's socket ($EFVI_SOCKET); on a node,
// pass the allocation's broker socket with -socket.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/efvitool"
	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

const usage = `efsink: receive on a kube-efvi VI with ef_vi filter specs (ef_vi's efsink).

Usage:
  efsink [options] <filter-spec>...

Filter specs (ef_vi's grammar; a udp:/tcp: host may be left out and is then
the pod's IP):
  udp|tcp:[mcastloop-rx,][vid=N,]host:port[,rhost:rport]   e.g. udp:5000, udp:239.1.2.3:5000
  eth:[vid=N,]mac   ethertype:0x88f7   ipproto:17
  unicast-all  multicast-all  unicast-mis  multicast-mis
  sniff:[promisc|no-promisc]  block-kernel[-unicast|-multicast]

Options:
`

// options are efsink's flags.
type options struct {
	socket   string
	hexdump  int
	count    uint64
	wait     bool
	interval time.Duration
	bufs     int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "efsink:", err)
		os.Exit(1)
	}
}

// parseArgs reads the command line; specs are left as text (their default
// host is the pod IP, known once connected).
func parseArgs(args []string, stderr io.Writer) (options, []string, error) {
	var o options
	fs := flag.NewFlagSet("efsink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&o.socket, "socket", "", "agent broker socket of the allocation (default $"+efvi.EnvSocket+")")
	fs.IntVar(&o.hexdump, "hexdump", 0, "dump the first `N` bytes of every frame in hex (0 = off)")
	fs.Uint64Var(&o.count, "count", 0, "stop after `N` frames (0 = run until interrupted)")
	fs.Uint64Var(&o.count, "c", 0, "short for -count")
	fs.BoolVar(&o.wait, "wait", false, "block in VI.Wait between events instead of busy polling")
	fs.DurationVar(&o.interval, "interval", 0, "print the receive rate every `interval`, e.g. 1s (0 = off)")
	fs.IntVar(&o.bufs, "bufs", 4096, "packet buffers to register (RX ring depth)")
	if err := fs.Parse(args); err != nil {
		return o, nil, err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return o, nil, errors.New("no filter spec given: e.g. `efsink udp:5000` (see the grammar above)")
	}
	if o.hexdump < 0 || o.hexdump > efvi.BufSize {
		return o, nil, fmt.Errorf("-hexdump %d: want 0..%d bytes", o.hexdump, efvi.BufSize)
	}
	if o.interval < 0 {
		return o, nil, fmt.Errorf("-interval %v: want >= 0", o.interval)
	}
	if o.bufs < 64 || o.bufs > 1<<20 {
		return o, nil, fmt.Errorf("-bufs %d: want 64..1048576", o.bufs)
	}
	return o, fs.Args(), nil
}

// Totals are what efsink counted.
type Totals struct {
	Frames   uint64
	Bytes    uint64
	PerSpec  []uint64 // by spec index; frames no spec matched are in Other
	Other    uint64
	Discards [8]uint64 // RX_DISCARD events by efvi.DiscardType
	Oflows   uint64
	Specs    []filter.Spec
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (*Totals, error) {
	o, texts, err := parseArgs(args, stderr)
	if err != nil {
		return nil, err
	}
	s, err := efvitool.Open(ctx, o.socket, o.bufs)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	// Post every RX buffer before any filter steers traffic here: a frame
	// that finds the ring empty is dropped (RxNoDesc).
	pool := efvi.NewBufPool(0, s.Mem.NumBufs())
	s.VI.RefillFrom(pool)
	ip, ipErr := s.PodIP()
	specs := make([]filter.Spec, 0, len(texts))
	for i, text := range texts {
		spec, err := filter.ParseWithDefaultHost(text, ip)
		if err != nil {
			if ipErr != nil {
				return nil, fmt.Errorf("filter spec %d %q: %w (udp:/tcp: specs without a host need the pod IP: %v)", i+1, text, err, ipErr)
			}
			return nil, fmt.Errorf("filter spec %d %q: %w", i+1, text, err)
		}
		if err := s.AddFilter(ctx, spec, stderr); err != nil {
			return nil, fmt.Errorf("add filter %s: %w", spec, err)
		}
		specs = append(specs, spec)
	}
	out := bufio.NewWriterSize(stdout, 64<<10)
	defer out.Flush()
	fmt.Fprintf(out, "efsink: VI %d on %s, filters %s\n", s.VI.Instance(), s.Info.Interface, joinSpecs(specs))
	out.Flush()
	t := &Totals{PerSpec: make([]uint64, len(specs)), Specs: specs}
	err = receive(ctx, s, pool, o, efvitool.NewClassifier(specs), t, out)
	printTotals(out, t)
	return t, err
}

func joinSpecs(specs []filter.Spec) string {
	var b strings.Builder
	for i, s := range specs {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(s.String())
	}
	return b.String()
}

// receive is the receive loop: no allocation per frame.
func receive(ctx context.Context, s *efvitool.Session, pool *efvi.BufPool, o options, cls *efvitool.Classifier, t *Totals, out *bufio.Writer) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	vi := s.VI
	evs := make([]efvi.Event, 64)
	line := make([]byte, 0, 256+4*o.hexdump)
	var p frame.Packet
	lastT, lastN := time.Now(), uint64(0)
	nextTick := lastT.Add(o.interval)
	for iter := 1; ; iter++ {
		waited := false
		if o.wait && !vi.EventQHasEvent() {
			slice := 100 * time.Millisecond
			if o.interval > 0 {
				slice = min(slice, max(time.Until(nextTick), time.Millisecond))
			}
			if err := vi.Wait(slice); err != nil && !errors.Is(err, efvi.ErrTimeout) {
				return fmt.Errorf("wait: %w", err)
			}
			waited = true
		}
		// Housekeeping (cancellation, rate, flushing dumps) every 4096
		// polls, or after every blocking wait: no clock read per frame.
		if waited || iter&0xfff == 0 {
			if ctx.Err() != nil {
				return nil
			}
			if o.interval > 0 {
				if now := time.Now(); !now.Before(nextTick) {
					rate(out, now.Sub(lastT), t.Frames-lastN)
					lastT, lastN, nextTick = now, t.Frames, now.Add(o.interval)
				}
			}
			if out.Buffered() > 0 {
				out.Flush()
			}
		}
		k := vi.EventQPoll(evs)
		if k == 0 {
			continue
		}
		rx := false
		for i := range evs[:k] {
			ev := &evs[i]
			switch ev.Type {
			case efvi.EventRX:
				rx = true
				b := vi.RxFrame(ev)
				if ev.Flags&efvi.FlagCont == 0 { // the last (usually only) buffer of a frame
					t.Bytes += uint64(ev.Bytes)
				}
				if ev.Flags&efvi.FlagSOP != 0 {
					t.Frames++
					ok := frame.Parse(b, &p) == nil
					if j := cls.Match(&p, ok); j == efvitool.Other {
						t.Other++
					} else {
						t.PerSpec[j]++
					}
					if o.hexdump > 0 {
						line = appendUint(append(line[:0], "frame "...), t.Frames)
						line = appendUint(append(line, " len "...), uint64(ev.Bytes))
						line = append(line, '\n')
						line = efvitool.AppendHexdump(line, b[:min(len(b), o.hexdump)])
						out.Write(line)
					}
				}
				pool.Put(int(ev.RqID))
			case efvi.EventRXDiscard:
				rx = true
				if d := ev.DiscardType(); int(d) < len(t.Discards) {
					t.Discards[d]++
				}
				pool.Put(int(ev.RqID))
			case efvi.EventOflow:
				t.Oflows++
			case efvi.EventReset:
				return errors.New("VI reset: the node's data path went away")
			}
		}
		if rx {
			vi.RefillFrom(pool)
		}
		if o.count > 0 && t.Frames >= o.count {
			return nil
		}
	}
}

func appendUint(b []byte, v uint64) []byte {
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

func rate(out *bufio.Writer, dt time.Duration, n uint64) {
	fmt.Fprintf(out, "rx %.0f pkts/s\n", float64(n)/dt.Seconds())
	out.Flush()
}

var discardNames = [8]string{"csum_bad", "mcast_mismatch", "crc_bad", "trunc", "rights", "ev_error", "other", "inner_csum_bad"}

func printTotals(out io.Writer, t *Totals) {
	fmt.Fprintf(out, "efsink: %d frames, %d bytes\n", t.Frames, t.Bytes)
	for i, s := range t.Specs {
		fmt.Fprintf(out, "  %-40s %d\n", s.String(), t.PerSpec[i])
	}
	if t.Other > 0 {
		fmt.Fprintf(out, "  %-40s %d\n", "(matched no spec here)", t.Other)
	}
	for d, n := range t.Discards {
		if n > 0 {
			fmt.Fprintf(out, "  rx_discard %-29s %d\n", discardNames[d], n)
		}
	}
	if t.Oflows > 0 {
		fmt.Fprintf(out, "  event queue overflows %d\n", t.Oflows)
	}
}
