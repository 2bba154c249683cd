package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/latency"
)

// Ports of the benchmark flow: the generator sends from FabricIP:GenPort to
// PortIP:EchoPort.
const (
	EchoPort = 7000
	GenPort  = 7002
)

// Options size one comparison.
type Options struct {
	Warm, Pings int           // RTT: warm-up and measured round trips
	Payload     int           // RTT UDP payload bytes (64)
	Window      time.Duration // flood window per size (0 = no flood)
	FloodSizes  []int         // UDP payload sizes to flood with (64, 1472)
	// ResponderCPU and GeneratorCPU pin the two sides' threads; -1 leaves a
	// side unpinned.
	ResponderCPU, GeneratorCPU int
	// Rounds interleave the contenders this many times (RTT pings are
	// split between rounds; each round floods for Window per size).
	Rounds int
	// Contenders to run, by name; nil = all four, in Order.
	Contenders []string
	Log        func(format string, args ...any) `json:"-"`
}

// Order is the order contenders run in (and appear in the table).
func Order() []string { return []string{NameVI, NameRawXDP, NameKernelSpin, NameKernelBlock} }

// DefaultOptions is what `make bench` runs: 3 interleaved rounds, 21k
// measured pings in all (7k per round after 1k warm-ups) and a 1 s flood per
// size per round, responder on CPU 0 and generator on CPU 1 when there are
// two CPUs.
func DefaultOptions() Options {
	o := Options{Warm: 1000, Pings: 21000, Payload: 64, Window: time.Second, FloodSizes: []int{64, 1472}, Rounds: 3,
		ResponderCPU: -1, GeneratorCPU: -1}
	if runtime.NumCPU() >= 2 {
		o.ResponderCPU, o.GeneratorCPU = 0, 1
	}
	return o
}

// Compare runs every contender on topo, measured by one generator, in
// o.Rounds interleaved rounds (VI, raw, spin, blocking, VI, raw, ...), so
// that a burst of noise from the shared machine is spread over all of them
// rather than hitting one. RTT summaries pool every round's samples; flood
// figures are the round with the median rate. The contenders own the port's
// XDP hook one at a time.
func Compare(ctx context.Context, topo *Topology, o Options) ([]Result, error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if o.Rounds < 1 {
		o.Rounds = 1
	}
	echo := netip.AddrPortFrom(topo.PortIP, EchoPort)
	g, err := NewGenerator(topo, GenPort, echo)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	names := o.Contenders
	if names == nil {
		names = Order()
	}
	samples := make([][]time.Duration, len(names))
	out := make([]Result, len(names))
	per := o
	per.Pings = (o.Pings + o.Rounds - 1) / o.Rounds
	for round := 0; round < o.Rounds; round++ {
		for i, name := range names {
			out[i].Name = name
			c, err := NewContender(ctx, topo, name)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			var r Round
			samples[i], r, err = measure(ctx, g, c, per, samples[i])
			if cerr := c.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("close: %w", cerr)
			}
			if err != nil {
				return nil, fmt.Errorf("%s (round %d): %w", name, round+1, err)
			}
			o.Log("round %d %s: RTT p50 %v p99 %v; flood %s", round+1, name, r.P50, r.P99, floods(r.Flood))
			out[i].Rounds = append(out[i].Rounds, r)
		}
	}
	for i := range out {
		out[i].RTT = latency.Summarize(samples[i])
		for _, size := range o.FloodSizes {
			if f, ok := medianFlood(out[i].Rounds, size); ok {
				out[i].Flood = append(out[i].Flood, f)
				if size == 64 {
					out[i].PPS, out[i].Drop = f.PPS, f.Drop
				}
			}
		}
	}
	return out, nil
}

func floods(fs []Flood) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "[%d B: %d/%d in %v = %.3f Mpps] ", f.Payload, f.Received, f.Sent, f.Window.Round(time.Millisecond), f.PPS/1e6)
	}
	return b.String()
}

// medianFlood picks, among the rounds' floods at size, the one with the
// median rate (the lower middle for an even count).
func medianFlood(rounds []Round, size int) (Flood, bool) {
	var fs []Flood
	for _, r := range rounds {
		for _, f := range r.Flood {
			if f.Payload == size {
				fs = append(fs, f)
			}
		}
	}
	if len(fs) == 0 {
		return Flood{}, false
	}
	slices.SortFunc(fs, func(a, b Flood) int { return cmp.Compare(a.PPS, b.PPS) })
	return fs[(len(fs)-1)/2], true
}

// NewContender builds the named contender on topo's port.
func NewContender(ctx context.Context, topo *Topology, name string) (Contender, error) {
	echo := netip.AddrPortFrom(topo.PortIP, EchoPort)
	switch name {
	case NameVI:
		return NewVI(ctx, topo, echo)
	case NameRawXDP:
		return NewRawXSK(topo)
	case NameKernelSpin:
		return NewKernelUDP(echo, true)
	case NameKernelBlock:
		return NewKernelUDP(echo, false)
	}
	return nil, fmt.Errorf("unknown contender %q (want one of %q)", name, Order())
}

// running is a contender loop on its own pinned thread.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func start(ctx context.Context, cpu int, fn func(context.Context) error) *running {
	ctx, cancel := context.WithCancel(ctx)
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() {
		if err := pinThread(cpu); err != nil {
			r.done <- err
			return
		}
		r.done <- fn(ctx)
	}()
	return r
}

func (r *running) stop() error {
	r.cancel()
	return <-r.done
}

// onCPU runs fn on a fresh thread pinned to cpu and waits for it.
func onCPU(cpu int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		if err := pinThread(cpu); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// measure takes one round of c's figures: its RTT (c echoes, g pings;
// samples are appended to all) and its RX rate under g's flood for each
// flood size (c only counts).
func measure(ctx context.Context, g *Generator, c Contender, o Options, all []time.Duration) ([]time.Duration, Round, error) {
	var r Round
	if o.Pings > 0 {
		resp := start(ctx, o.ResponderCPU, c.Echo)
		from := len(all)
		err := onCPU(o.GeneratorCPU, func() (err error) {
			all, err = latency.AppendRTT(all, g, o.Payload, o.Warm, o.Pings)
			return err
		})
		if serr := resp.stop(); serr != nil {
			return all, r, fmt.Errorf("echo: %w", serr)
		}
		if err != nil {
			return all, r, fmt.Errorf("RTT: %w", err)
		}
		lat := latency.Summarize(slices.Clone(all[from:]))
		r.P50, r.P99 = lat.P50, lat.P99
	}
	for _, size := range o.FloodSizes {
		if o.Window <= 0 {
			break
		}
		f, err := flood(ctx, g, c, o, size)
		if err != nil {
			return all, r, fmt.Errorf("flood %d B: %w", size, err)
		}
		r.Flood = append(r.Flood, f)
	}
	return all, r, nil
}

func flood(ctx context.Context, g *Generator, c Contender, o Options, size int) (Flood, error) {
	var cnt atomic.Uint64
	sink := start(ctx, o.ResponderCPU, func(ctx context.Context) error { return c.Sink(ctx, &cnt) })
	var sent uint64
	var took time.Duration
	var before, after uint64
	err := onCPU(o.GeneratorCPU, func() (err error) {
		// Warm up (caches, ring state), let queues drain, then measure
		// one window and wait until the receiver has taken what it will.
		if _, _, err = g.Flood(size, o.Window/5); err != nil {
			return err
		}
		before = settle(&cnt)
		sent, took, err = g.Flood(size, o.Window)
		after = settle(&cnt)
		return err
	})
	serr := sink.stop()
	if err = errors.Join(err, serr); err != nil {
		return Flood{}, err
	}
	got := after - before
	f := Flood{Payload: size, Sent: sent, Received: got, Window: took}
	if took > 0 {
		f.PPS = float64(got) / took.Seconds()
		f.SentPPS = float64(sent) / took.Seconds()
	}
	if sent > 0 {
		f.Drop = 1 - float64(got)/float64(sent)
	}
	return f, nil
}

// settle waits until the counter has not moved for 50 ms (at most 2 s) and
// returns it: everything queued towards the receiver has been taken.
func settle(cnt *atomic.Uint64) uint64 {
	last := cnt.Load()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		now := cnt.Load()
		if now == last {
			break
		}
		last = now
	}
	return last
}
