package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// The paired benchmark resolves the VI's extra latency over raw AF_XDP to a
// fraction of a microsecond on a noisy shared machine: both paths are set up
// once, side by side on the same port, and pings alternate between them in
// short blocks, so a burst of load hits both; the figure is the median over
// block pairs of VI p50 ÷ raw p50, with its spread. The port's XDP link is
// switched between the data plane's program and the raw redirect by a link
// update (atomic) between blocks; one responder thread serves whichever path
// is live. Each echo is timestamped by the responder (same monotonic clock
// as the generator, same process), which splits the RTT into one-way RX
// (generator send → responder sees the frame) and TX (→ generator sees the
// echo) times.

// PairedOptions size the paired run.
type PairedOptions struct {
	Blocks   int // block pairs
	PerBlock int // measured pings per block
	Warm     int // warm-up pings per block (discarded)
	Payload  int
	// ResponderCPU and GeneratorCPU as in Options.
	ResponderCPU, GeneratorCPU int
}

// DefaultPairedOptions: 60 block pairs of 200 pings each (24k pings).
func DefaultPairedOptions(o Options) PairedOptions {
	return PairedOptions{Blocks: 60, PerBlock: 200, Warm: 20, Payload: o.Payload, ResponderCPU: o.ResponderCPU, GeneratorCPU: o.GeneratorCPU}
}

// PairedPath is one path's figures: medians over blocks of each block's
// median.
type PairedPath struct {
	RTT time.Duration `json:"rtt_p50_ns"`
	RX  time.Duration `json:"rx_oneway_p50_ns"` // generator send → responder sees the frame
	TX  time.Duration `json:"tx_oneway_p50_ns"` // responder sees the frame → generator sees the echo
}

// Paired is the result of a paired run.
type Paired struct {
	Options PairedOptions `json:"options"`
	VI      PairedPath    `json:"vi"`
	Raw     PairedPath    `json:"raw"`
	// Ratio is the median over block pairs of VI RTT p50 ÷ raw RTT p50;
	// P10 and P90 its spread.
	Ratio    float64 `json:"ratio"`
	RatioP10 float64 `json:"ratio_p10"`
	RatioP90 float64 `json:"ratio_p90"`
}

// stamp is where the responder records when it saw the last frame.
type stamp struct {
	epoch time.Time
	at    atomic.Int64 // ns since epoch
}

func (s *stamp) now() int64 { return int64(time.Since(s.epoch)) }

// stepper is one echo poll of a path; it stamps s when a frame arrives.
type stepper func(s *stamp) error

// RunPaired runs the paired benchmark on topo.
func RunPaired(ctx context.Context, topo *Topology, o PairedOptions) (*Paired, error) {
	echo := netip.AddrPortFrom(topo.PortIP, EchoPort)
	g, err := NewGenerator(topo, GenPort, echo)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	c, err := NewVI(ctx, topo, echo)
	if err != nil {
		return nil, err
	}
	vi := c.(*viRig)
	defer vi.Close()
	rs, err := openRawSocket(rawSocketConfig{name: "rawp", ifindex: topo.Port.Index, ifname: topo.Port.Name,
		frames: rawFrames, rx: rawRx, tx: rawTx, detached: true})
	if err != nil {
		return nil, fmt.Errorf("raw AF_XDP: %w", err)
	}
	raw := &rawXSK{rs}
	defer raw.Close()
	sw, err := newXDPSwitch(vi.pinDir, raw.prog)
	if err != nil {
		return nil, err
	}
	defer sw.Close()

	st := &stamp{epoch: time.Now()}
	var live atomic.Int32 // 0 = VI, 1 = raw
	steps := [2]stepper{vi.stampedEchoStep, raw.stampedEchoStep}
	resp := start(ctx, o.ResponderCPU, func(ctx context.Context) error {
		for polls := 0; ; polls++ {
			if err := steps[live.Load()](st); err != nil {
				return err
			}
			if polls&emptyPollsPerCtx == 0 && ctx.Err() != nil {
				return nil
			}
		}
	})
	var blocks [2][][3][]time.Duration // path → block → rtt, rx, tx samples
	err = onCPU(o.GeneratorCPU, func() error {
		payload := make([]byte, o.Payload)
		for b := 0; b < 2*o.Blocks; b++ {
			path := b % 2
			if b/2%2 == 1 {
				path = 1 - path // ABBA order: neither path always goes first
			}
			if err := sw.use(path); err != nil {
				return err
			}
			live.Store(int32(path))
			var blk [3][]time.Duration
			for i := 0; i < o.Warm+o.PerBlock; i++ {
				payload[0] = byte(i)
				t0 := st.now()
				rtt, err := g.Ping(payload)
				if err != nil {
					return fmt.Errorf("block %d (%s) ping %d: %w", b, []string{NameVI, NameRawXDP}[path], i, err)
				}
				if i < o.Warm {
					continue
				}
				rx := time.Duration(st.at.Load() - t0)
				blk[0] = append(blk[0], rtt)
				blk[1] = append(blk[1], rx)
				blk[2] = append(blk[2], rtt-rx)
			}
			blocks[path] = append(blocks[path], blk)
		}
		return nil
	})
	if serr := resp.stop(); err == nil && serr != nil {
		err = fmt.Errorf("echo: %w", serr)
	}
	if uerr := sw.use(0); err == nil {
		err = uerr
	}
	if err != nil {
		return nil, err
	}
	p := &Paired{Options: o, VI: pathFigures(blocks[0]), Raw: pathFigures(blocks[1])}
	var ratios []float64
	for i := range blocks[0] {
		ratios = append(ratios, float64(median(blocks[0][i][0]))/float64(median(blocks[1][i][0])))
	}
	slices.Sort(ratios)
	p.Ratio, p.RatioP10, p.RatioP90 = ratios[len(ratios)/2], ratios[len(ratios)/10], ratios[len(ratios)*9/10]
	return p, nil
}

func median[T cmp.Ordered](v []T) T {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func pathFigures(blocks [][3][]time.Duration) PairedPath {
	var m [3][]time.Duration
	for _, b := range blocks {
		for j := range m {
			m[j] = append(m[j], median(b[j]))
		}
	}
	return PairedPath{RTT: median(m[0]), RX: median(m[1]), TX: median(m[2])}
}

// xdpSwitch flips the port's XDP link between the data plane's program and
// the raw redirect.
type xdpSwitch struct {
	l       link.Link
	progs   [2]*ebpf.Program // 0 = the data plane's port program, 1 = raw
	current int
}

func newXDPSwitch(pinDir string, raw *ebpf.Program) (*xdpSwitch, error) {
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, "link_port_xdp"), nil)
	if err != nil {
		return nil, fmt.Errorf("the data plane's port link: %w", err)
	}
	info, err := l.Info()
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("port link info: %w", err)
	}
	dp, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("the data plane's port program: %w", err)
	}
	return &xdpSwitch{l: l, progs: [2]*ebpf.Program{dp, raw}}, nil
}

func (s *xdpSwitch) use(path int) error {
	if s.current == path {
		return nil
	}
	if err := s.l.Update(s.progs[path]); err != nil {
		return fmt.Errorf("switch the port's XDP program: %w", err)
	}
	s.current = path
	return nil
}

func (s *xdpSwitch) Close() error {
	return errors.Join(s.use(0), s.progs[0].Close(), s.l.Close())
}
