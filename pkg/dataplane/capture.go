package dataplane

// Capture: the data plane's onload_tcpdump. A VI's traffic never reaches a
// netdev the kernel's packet taps see in full (RX frames are redirected into
// the XSK before any tap, TX frames leave v<N> by XDP redirect), so the VI
// programs copy frames out themselves when asked:
//
//   - The capture map (ARRAY, vi → u32 snap length, 0 = off) is checked in
//     the VI RX program on v<N>p (after the counters, before the XSK
//     redirect) and in the VI TX program on v<N> (after the source check,
//     before the redirect to the port; spoofed frames are not captured).
//     With capture off the cost per frame is that one array lookup.
//   - With capture on, bpf_perf_event_output(ctx, cap_events,
//     BPF_F_CURRENT_CPU | caplen<<32, &meta, 24) appends the first caplen
//     bytes of the frame (caplen = min(snap length, frame length)) to a
//     24-byte metadata record (capture time, VI, direction, frame length,
//     caplen) on the perf ring of the current CPU.
//   - The agent reads the rings with cilium/ebpf's perf reader (Capturer).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/perf"
	"golang.org/x/sys/unix"
)

// Direction says which way a captured frame went, seen from the VI.
type Direction uint32

// Directions of captured frames.
const (
	CaptureRX Direction = 0 // delivered to the VI
	CaptureTX Direction = 1 // sent by the VI (passed the source check)
)

func (d Direction) String() string {
	switch d {
	case CaptureRX:
		return "rx"
	case CaptureTX:
		return "tx"
	}
	return fmt.Sprintf("dir%d", uint32(d))
}

// Capture metadata layout (the perf sample starts with it; the frame's
// first caplen bytes follow).
const (
	capMetaSize  = 24
	capOffTime   = 0  // u64 bpf_ktime_get_ns (CLOCK_MONOTONIC)
	capOffVI     = 8  // u32
	capOffDir    = 12 // u32 Direction
	capOffLen    = 16 // u32 frame length
	capOffCapLen = 20 // u32 bytes of the frame that follow

	bpfFCurrentCPU = 0xffffffff

	// MaxSnapLen bounds the snap length (the kernel's BPF_F_CTXLEN_MASK
	// allows 20 bits; a VI frame is at most a 64 KiB XDP buffer).
	MaxSnapLen = 65535
)

// captureHookRegs are the registers the hook may use: ctx, vi and length
// must hold the XDP context, the VI id and the frame length; save is a
// callee-saved register the hook may clobber. All four survive helper calls.
type captureHookRegs struct {
	ctx, vi, length, save asm.Register
}

// captureHook emits: if capture[vi] != 0, perf_event_output(ctx,
// cap_events, BPF_F_CURRENT_CPU | caplen<<32, meta, 24). keyOff is the stack
// offset of a u32 holding the VI id (the lookup key); metaOff is 24 free
// stack bytes. R0-R5 are clobbered.
func (g *gen) captureHook(m *maps, r captureHookRegs, keyOff, metaOff int16, dir Direction) {
	skip, ok := g.label("capskip"), g.label("capok")
	g.emit(
		mapPtr(asm.R1, m.capture),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(keyOff)),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, skip),
		asm.LoadMem(r.save, asm.R0, 0, asm.Word),
		asm.JEq.Imm(r.save, 0, skip),
		asm.JLE.Reg(r.save, r.length, ok), // snap length <= frame length
		asm.Mov.Reg(r.save, r.length),
	)
	g.mark(ok)
	g.emit(
		asm.StoreMem(asm.RFP, metaOff+capOffCapLen, r.save, asm.Word),
		asm.StoreMem(asm.RFP, metaOff+capOffLen, r.length, asm.Word),
		asm.StoreMem(asm.RFP, metaOff+capOffVI, r.vi, asm.Word),
		asm.StoreImm(asm.RFP, metaOff+capOffDir, int64(dir), asm.Word),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.RFP, metaOff+capOffTime, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R3, r.save),
		asm.LSh.Imm(asm.R3, 32),
		asm.LoadImm(asm.R1, bpfFCurrentCPU, asm.DWord),
		asm.Or.Reg(asm.R3, asm.R1),
		asm.Mov.Reg(asm.R1, r.ctx),
		mapPtr(asm.R2, m.events),
		asm.Mov.Reg(asm.R4, asm.RFP),
		asm.Add.Imm(asm.R4, int32(metaOff)),
		asm.Mov.Imm(asm.R5, capMetaSize),
		asm.FnPerfEventOutput.Call(),
	)
	g.mark(skip)
}

// Frame is one captured frame.
type Frame struct {
	Time time.Time // when the VI program saw it
	VI   uint32
	Dir  Direction
	Len  uint32 // the frame's length on the wire
	Data []byte // its first min(Len, snap length) bytes
}

// ParseSample decodes one perf sample the VI programs wrote. mono converts
// the sample's CLOCK_MONOTONIC nanoseconds to wall time. Data aliases raw.
// The perf ring may pad raw with up to 7 bytes of garbage; they are ignored.
func ParseSample(raw []byte, mono func(ns uint64) time.Time) (Frame, error) {
	if len(raw) < capMetaSize {
		return Frame{}, fmt.Errorf("capture sample of %d bytes is shorter than its %d-byte header", len(raw), capMetaSize)
	}
	e := binary.NativeEndian
	f := Frame{
		VI:  e.Uint32(raw[capOffVI:]),
		Dir: Direction(e.Uint32(raw[capOffDir:])),
		Len: e.Uint32(raw[capOffLen:]),
	}
	caplen := e.Uint32(raw[capOffCapLen:])
	if caplen > f.Len {
		return Frame{}, fmt.Errorf("capture sample claims %d captured bytes of a %d-byte frame", caplen, f.Len)
	}
	if uint64(caplen) > uint64(len(raw)-capMetaSize) {
		return Frame{}, fmt.Errorf("capture sample claims %d captured bytes but carries %d", caplen, len(raw)-capMetaSize)
	}
	if f.Dir != CaptureRX && f.Dir != CaptureTX {
		return Frame{}, fmt.Errorf("capture sample has unknown direction %d", f.Dir)
	}
	if mono != nil {
		f.Time = mono(e.Uint64(raw[capOffTime:]))
	}
	f.Data = raw[capMetaSize : capMetaSize+int(caplen)]
	return f, nil
}

// monoToWall returns a converter from CLOCK_MONOTONIC nanoseconds to wall
// time, anchored now.
func monoToWall() func(uint64) time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return func(uint64) time.Time { return time.Now() }
	}
	now := time.Now()
	mono := uint64(ts.Nano())
	return func(ns uint64) time.Time { return now.Add(time.Duration(int64(ns) - int64(mono))) }
}

// CaptureOptions tune a Capturer.
type CaptureOptions struct {
	// PerCPUBuffer is each CPU's perf ring in bytes (default 1 MiB, rounded
	// up to pages by the kernel).
	PerCPUBuffer int
	// Queue is how many frames a Capture buffers for its reader before it
	// counts drops (default 4096).
	Queue  int
	Logger *slog.Logger
}

// Capturer turns a port's capture switches on and off and reads the
// frames the VI programs output, handing each to the Capture of its VI.
// Use one Capturer per Port: a second one would steal the perf rings.
// The perf rings exist only while some VI is being captured.
type Capturer struct {
	port *Port
	opts CaptureOptions
	log  *slog.Logger

	mu     sync.Mutex
	reader *perf.Reader
	done   chan struct{}
	subs   map[uint32]*Capture
}

// NewCapturer returns the port's capturer. It turns off every capture switch
// a previous agent may have left on.
func NewCapturer(p *Port, opts CaptureOptions) (*Capturer, error) {
	if opts.PerCPUBuffer <= 0 {
		opts.PerCPUBuffer = 1 << 20
	}
	if opts.Queue <= 0 {
		opts.Queue = 4096
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.usable(); err != nil {
		return nil, err
	}
	for vi := uint32(0); vi < p.cfg.Limits.MaxVIs; vi++ {
		var on uint32
		if err := p.m.capture.Lookup(vi, &on); err == nil && on != 0 {
			if err := p.m.capture.Put(vi, uint32(0)); err != nil {
				return nil, fmt.Errorf("turn off stale capture of VI %d: %w", vi, err)
			}
		}
	}
	return &Capturer{port: p, opts: opts, log: opts.Logger.With("port", p.cfg.Ifname), subs: map[uint32]*Capture{}}, nil
}

// Capture is a running capture of one VI.
type Capture struct {
	c      *Capturer
	vi     uint32
	frames chan Frame
	once   sync.Once

	mu      sync.Mutex
	dropped uint64 // frames the reader could not queue (consumer too slow)
	lost    uint64 // samples the kernel could not write (perf ring full, any VI)
}

// Start turns on capture of VI vi with the given snap length (0: the
// maximum). A VI already being captured is EBUSY; an unknown VI ENODEV.
func (c *Capturer) Start(vi uint32, snapLen uint32) (*Capture, error) {
	if snapLen == 0 || snapLen > MaxSnapLen {
		snapLen = MaxSnapLen
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, busy := c.subs[vi]; busy {
		return nil, fmt.Errorf("capture VI %d: already being captured (one capture per VI at a time): %w", vi, unix.EBUSY)
	}
	if _, ok := c.port.VI(vi); !ok {
		return nil, fmt.Errorf("capture VI %d: no such VI on %s: %w", vi, c.port.cfg.Ifname, unix.ENODEV)
	}
	if c.reader == nil {
		rd, err := perf.NewReader(c.port.m.events, c.opts.PerCPUBuffer)
		if err != nil {
			return nil, fmt.Errorf("capture VI %d: open perf rings: %w", vi, err)
		}
		c.reader, c.done = rd, make(chan struct{})
		go c.run(rd, c.done, monoToWall())
	}
	cp := &Capture{c: c, vi: vi, frames: make(chan Frame, c.opts.Queue)}
	c.subs[vi] = cp
	if err := c.port.m.capture.Put(vi, snapLen); err != nil {
		delete(c.subs, vi)
		if done := c.stopReaderLocked(); done != nil {
			// run may be waiting for c.mu: wait for it without the lock.
			c.mu.Unlock()
			<-done
			c.mu.Lock()
		}
		return nil, fmt.Errorf("capture VI %d: turn on: %w", vi, err)
	}
	c.log.Info("capture started", "vi", vi, "snaplen", snapLen)
	return cp, nil
}

// run reads samples until the reader is closed.
func (c *Capturer) run(rd *perf.Reader, done chan struct{}, mono func(uint64) time.Time) {
	defer close(done)
	var rec perf.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if !errors.Is(err, os.ErrClosed) {
				c.log.Error("capture reader stopped", "err", err)
			}
			return
		}
		if rec.LostSamples > 0 {
			c.mu.Lock()
			for _, s := range c.subs {
				s.addLost(rec.LostSamples)
			}
			c.mu.Unlock()
			continue
		}
		f, err := ParseSample(rec.RawSample, mono)
		if err != nil {
			c.log.Warn("bad capture sample", "err", err)
			continue
		}
		f.Data = append([]byte(nil), f.Data...) // rec's buffer is reused
		c.mu.Lock()
		if s := c.subs[f.VI]; s != nil {
			select {
			case s.frames <- f:
			default:
				s.mu.Lock()
				s.dropped++
				s.mu.Unlock()
			}
		}
		c.mu.Unlock()
	}
}

// stopReaderLocked closes the perf reader once no capture is left, and
// returns the channel its goroutine closes on exit (nil if it still runs).
// Wait on it only after releasing c.mu: the goroutine may be waiting for it.
func (c *Capturer) stopReaderLocked() chan struct{} {
	if c.reader == nil || len(c.subs) > 0 {
		return nil
	}
	if err := c.reader.Close(); err != nil {
		c.log.Warn("close capture reader", "err", err)
	}
	done := c.done
	c.reader, c.done = nil, nil
	return done
}

// Close stops every capture.
func (c *Capturer) Close() error {
	c.mu.Lock()
	subs := make([]*Capture, 0, len(c.subs))
	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	var errs []error
	for _, s := range subs {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// VI is the captured VI.
func (s *Capture) VI() uint32 { return s.vi }

// Frames delivers the captured frames; it is closed by Close.
func (s *Capture) Frames() <-chan Frame { return s.frames }

// Dropped is how many frames were lost: queued too slowly for the reader
// (dropped), or not written by the kernel because a perf ring was full
// (lost; counted for every capture running at the time).
func (s *Capture) Dropped() (dropped, lost uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped, s.lost
}

func (s *Capture) addLost(n uint64) {
	s.mu.Lock()
	s.lost += n
	s.mu.Unlock()
}

// Close turns the VI's capture off. Frames already queued stay readable
// until the channel is drained; it is then closed.
func (s *Capture) Close() error {
	var err error
	s.once.Do(func() {
		c := s.c
		// Switch off first so no new samples for this VI are written, then
		// unsubscribe under the lock the reader dispatches under.
		if perr := c.port.m.capture.Put(s.vi, uint32(0)); perr != nil && !errors.Is(perr, os.ErrClosed) {
			err = fmt.Errorf("capture VI %d: turn off: %w", s.vi, perr)
		}
		c.mu.Lock()
		delete(c.subs, s.vi)
		done := c.stopReaderLocked()
		close(s.frames)
		c.mu.Unlock()
		if done != nil {
			<-done
		}
		c.log.Info("capture stopped", "vi", s.vi)
	})
	return err
}

// Status is a port data plane's state, for diagnostics.
type Status struct {
	Ifname    string
	Ifindex   int
	Attached  bool     // the port's XDP link is live on Ifindex
	ProgramID uint32   // the port XDP program's id (0 when unknown)
	VIs       []uint32 // VI ids, unsorted
	Capturing []uint32 // VI ids whose capture switch is on
}

// Status reports the port's state.
func (p *Port) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{Ifname: p.cfg.Ifname, Ifindex: p.ifindex}
	for id := range p.vis {
		s.VIs = append(s.VIs, id)
	}
	if p.closed {
		return s
	}
	if p.xdp != nil {
		if info, err := p.xdp.Info(); err == nil {
			s.ProgramID = uint32(info.Program)
			if x := info.XDP(); x != nil {
				s.Attached = int(x.Ifindex) == p.ifindex
			}
		}
	}
	for _, id := range s.VIs {
		var on uint32
		if err := p.m.capture.Lookup(id, &on); err == nil && on != 0 {
			s.Capturing = append(s.Capturing, id)
		}
	}
	return s
}
