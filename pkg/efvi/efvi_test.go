package efvi_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
	"github.com/kube-efvi/kube-efvi/pkg/xsk/xsktest"
)

type agentCfg struct {
	frames             uint32
	rx, tx, fill, comp uint32
}

func (c agentCfg) withDefaults() agentCfg {
	if c.frames == 0 {
		c.frames = 512
	}
	for _, p := range []*uint32{&c.rx, &c.tx, &c.fill, &c.comp} {
		if *p == 0 {
			*p = 256
		}
	}
	return c
}

// agent does what the node agent does: sealed memfd, socket bound to the
// port's queue 0, xskmap insertion. It returns fds the caller owns.
func agent(t testing.TB, tp *xsktest.Topo, c agentCfg) (xskFD, memFD int, g xsk.Geometry) {
	t.Helper()
	c = c.withDefaults()
	u := xsk.UMEMConfig{NumFrames: c.frames}
	mem, err := xsk.NewMemfd("efvt-vi", u.Size())
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	s, err := xsk.Create(xsk.Config{Ifindex: tp.Port.Index, UMEM: u, Mem: mem,
		RxSize: c.rx, TxSize: c.tx, FillSize: c.fill, CompSize: c.comp, TxBudget: c.tx})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := tp.Insert(0, int(s.FD.Fd())); err != nil {
		t.Fatal(err)
	}
	xskFD, err = unix.FcntlInt(s.FD.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	memFD, err = unix.FcntlInt(mem.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return xskFD, memFD, s.Geometry
}

func newVI(t testing.TB, tp *xsktest.Topo, c agentCfg, opts efvi.Options) *efvi.VI {
	t.Helper()
	x, m, g := agent(t, tp, c)
	vi, err := efvi.NewSoftwareVIFromFDs(x, m, g, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := vi.Close(); err != nil {
			t.Errorf("close VI: %v", err)
		}
	})
	return vi
}

// pollFor polls until cond says stop or 5 s pass; it returns all events.
func pollFor(t testing.TB, vi *efvi.VI, want int, keep func(efvi.Event) bool) []efvi.Event {
	t.Helper()
	var got []efvi.Event
	evs := make([]efvi.Event, 32)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < want && time.Now().Before(deadline) {
		n := vi.EventQPoll(evs)
		for _, e := range evs[:n] {
			if keep == nil || keep(e) {
				got = append(got, e)
			}
		}
		if n == 0 {
			_ = vi.Wait(10 * time.Millisecond)
		}
	}
	return got
}

func postAll(t testing.TB, vi *efvi.VI, first, n int, idBase efvi.RqID) {
	t.Helper()
	m := vi.Memory()
	for i := first; i < first+n; i++ {
		if err := vi.ReceiveInit(m.Addr(i), idBase+efvi.RqID(i)); err != nil {
			t.Fatalf("ReceiveInit(%d): %v", i, err)
		}
	}
	vi.ReceivePush()
}

func TestReceive(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{Instance: 3})
	if vi.ReceivePrefixLen() != 0 || vi.RxFrameOffset() < 256 || vi.ReceiveBufferLen() != 2048-vi.RxFrameOffset() {
		t.Errorf("prefix %d offset %d buflen %d", vi.ReceivePrefixLen(), vi.RxFrameOffset(), vi.ReceiveBufferLen())
	}
	postAll(t, vi, 0, 32, 1000)
	if vi.ReceiveFillLevel() != 32 || vi.ReceiveCapacity() != 256 || vi.ReceiveSpace() != 256-32 {
		t.Errorf("fill level %d capacity %d space %d", vi.ReceiveFillLevel(), vi.ReceiveCapacity(), vi.ReceiveSpace())
	}
	u := tp.ListenUDP(t, 0)
	const n = 20
	for i := 0; i < n; i++ {
		if err := tp.SendTo(u, 9000, []byte(fmt.Sprintf("packet %02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	evs := pollFor(t, vi, n, nil)
	if len(evs) != n {
		t.Fatalf("got %d events, want %d: %+v", len(evs), n, evs)
	}
	seen := map[efvi.RqID]bool{}
	for i, e := range evs {
		if e.Type != efvi.EventRX || e.Flags&efvi.FlagSOP == 0 || e.Flags&efvi.FlagCont != 0 || e.Q != 3 {
			t.Errorf("event %d: %+v, want RX with SOP on queue 3", i, e)
		}
		f := vi.RxFrame(&e)
		if int(e.Bytes) != len(f) || e.Bytes != 42+9 {
			t.Errorf("event %d: bytes %d, frame %d", i, e.Bytes, len(f))
		}
		var p frame.Packet
		if err := frame.Parse(f, &p); err != nil || p.DstPort != 9000 || p.Dst != tp.PortIP {
			t.Fatalf("event %d: parse %v %+v", i, err, p)
		}
		if want := fmt.Sprintf("packet %02d", i); string(p.Payload(f)) != want {
			t.Errorf("event %d payload %q want %q", i, p.Payload(f), want)
		}
		// The id must be the one posted with the buffer the frame is in.
		buf := vi.Memory().Index(e.Addr)
		if e.RqID != efvi.RqID(1000+buf) || seen[e.RqID] {
			t.Errorf("event %d: rq id %d for buffer %d (dup %v)", i, e.RqID, buf, seen[e.RqID])
		}
		seen[e.RqID] = true
	}
	if vi.ReceiveFillLevel() != 32-n {
		t.Errorf("fill level %d after %d RX, want %d", vi.ReceiveFillLevel(), n, 32-n)
	}
	st, err := vi.Stats()
	if err != nil || st.RxEvents != n || st.RxNoDesc != 0 {
		t.Errorf("stats %+v %v", st, err)
	}
}

func flowTo(tp *xsktest.Topo, dport uint16) frame.UDPFlow {
	return frame.UDPFlow{
		SrcMAC: frame.MAC(tp.Port.MAC), DstMAC: frame.MAC(tp.Peer.MAC),
		Src: netip.AddrPortFrom(tp.PortIP, 7000), Dst: netip.AddrPortFrom(tp.PeerIP, dport),
	}
}

func TestTransmitAndUnbundle(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{})
	u := tp.ListenUDP(t, 0)
	fl := flowTo(tp, u.Port)
	m := vi.Memory()
	const n = 100 // > TransmitBatch: needs at least two TX events
	for i := 0; i < n; i++ {
		l, err := fl.Build(m.Buf(i), []byte(fmt.Sprintf("tx %03d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if err := vi.TransmitInit(m.Addr(i), l, efvi.RqID(5000+i)); err != nil {
			t.Fatalf("TransmitInit %d: %v", i, err)
		}
	}
	if vi.TransmitFillLevel() != n {
		t.Errorf("tx fill level %d", vi.TransmitFillLevel())
	}
	vi.TransmitPush()
	buf := make([]byte, 2048)
	for i := 0; i < n; i++ {
		k, from, err := u.Recv(buf, 5*time.Second)
		if err != nil {
			t.Fatalf("fabric received %d of %d: %v", i, n, err)
		}
		if want := fmt.Sprintf("tx %03d", i); string(buf[:k]) != want || from != netip.AddrPortFrom(tp.PortIP, 7000) {
			t.Fatalf("fabric got %q from %v, want %q", buf[:k], from, want)
		}
	}
	var ids []efvi.RqID
	idbuf := make([]efvi.RqID, efvi.TransmitBatch)
	evs := pollFor(t, vi, 2, func(e efvi.Event) bool { return e.Type == efvi.EventTX })
	for _, e := range evs {
		if e.Count > efvi.TransmitBatch {
			t.Errorf("TX event bundles %d > %d", e.Count, efvi.TransmitBatch)
		}
		k := vi.TransmitUnbundle(&e, idbuf)
		if k != int(e.Count) {
			t.Errorf("unbundle %d, event count %d", k, e.Count)
		}
		ids = append(ids, idbuf[:k]...)
	}
	for len(ids) < n { // the rest, if the first polls split them
		more := pollFor(t, vi, 1, func(e efvi.Event) bool { return e.Type == efvi.EventTX })
		if len(more) == 0 {
			break
		}
		for _, e := range more {
			ids = append(ids, idbuf[:vi.TransmitUnbundle(&e, idbuf)]...)
		}
	}
	if len(ids) != n {
		t.Fatalf("unbundled %d ids, want %d", len(ids), n)
	}
	for i, id := range ids {
		if id != efvi.RqID(5000+i) {
			t.Fatalf("id %d = %d, want %d (submission order)", i, id, 5000+i)
		}
	}
	if vi.TransmitFillLevel() != 0 || vi.TransmitSpace() != vi.TransmitCapacity() {
		t.Errorf("after unbundle: fill %d space %d cap %d", vi.TransmitFillLevel(), vi.TransmitSpace(), vi.TransmitCapacity())
	}
}

func TestTransmitErrors(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{})
	u := tp.ListenUDP(t, 0)
	fl := flowTo(tp, u.Port)
	m := vi.Memory()
	l, _ := fl.Build(m.Buf(0), []byte("good 1"))
	l2, _ := fl.Build(m.Buf(1), []byte("good 2"))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(vi.TransmitInit(m.Addr(0), l, 1))
	must(vi.TransmitInit(efvi.Addr(len(m.Bytes())), 60, 2)) // outside the region
	must(vi.TransmitInit(m.Addr(2)+100, 2000, 3))           // crosses the buffer end
	must(vi.TransmitInit(m.Addr(3), 0, 4))                  // empty
	must(vi.TransmitInit(m.Addr(1), l2, 5))
	vi.TransmitPush()
	type got struct {
		typ efvi.EventType
		sub uint16
		ids []efvi.RqID
	}
	var all []got
	idbuf := make([]efvi.RqID, efvi.TransmitBatch)
	total := 0
	deadline := time.Now().Add(5 * time.Second)
	evs := make([]efvi.Event, 8)
	for total < 5 && time.Now().Before(deadline) {
		n := vi.EventQPoll(evs)
		for _, e := range evs[:n] {
			k := vi.TransmitUnbundle(&e, idbuf)
			total += k
			all = append(all, got{e.Type, e.Sub, append([]efvi.RqID(nil), idbuf[:k]...)})
		}
	}
	want := []got{
		{efvi.EventTX, 0, []efvi.RqID{1}},
		{efvi.EventTXError, uint16(efvi.TxErrorRights), []efvi.RqID{2}},
		{efvi.EventTXError, uint16(efvi.TxError2Big), []efvi.RqID{3}},
		{efvi.EventTXError, uint16(efvi.TxError2Big), []efvi.RqID{4}},
		{efvi.EventTX, 0, []efvi.RqID{5}},
	}
	if fmt.Sprint(all) != fmt.Sprint(want) {
		t.Fatalf("events\n got %v\nwant %v", all, want)
	}
	st, _ := vi.Stats()
	if st.TxErrors != 3 || st.TxCompleted != 2 || st.TxInvalidDescs != 0 {
		t.Errorf("stats %+v", st)
	}
	buf := make([]byte, 100)
	for _, want := range []string{"good 1", "good 2"} {
		k, _, err := u.Recv(buf, 5*time.Second)
		if err != nil || string(buf[:k]) != want {
			t.Fatalf("fabric got %q %v, want %q", buf[:k], err, want)
		}
	}
}

// rawUDP builds a frame from the fabric to the VI.
func rawUDP(tp *xsktest.Topo, payload string) []byte {
	fl := frame.UDPFlow{SrcMAC: frame.MAC(tp.Peer.MAC), DstMAC: frame.MAC(tp.Port.MAC),
		Src: netip.AddrPortFrom(tp.PeerIP, 1234), Dst: netip.AddrPortFrom(tp.PortIP, 9000)}
	b := make([]byte, 200)
	n, _ := fl.Build(b, []byte(payload))
	return b[:n]
}

func TestReceiveDiscards(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{})
	postAll(t, vi, 0, 64, 0)
	raw := tp.RawSocket(t)
	send := func(b []byte) {
		t.Helper()
		if err := raw.Send(b); err != nil {
			t.Fatal(err)
		}
	}
	next := func() efvi.Event {
		t.Helper()
		evs := pollFor(t, vi, 1, nil)
		if len(evs) != 1 {
			t.Fatalf("got %d events, want 1: %+v", len(evs), evs)
		}
		return evs[0]
	}
	good := rawUDP(tp, "good")
	badIP := rawUDP(tp, "bad ip")
	badIP[14+10] ^= 0x55
	badUDP := rawUDP(tp, "bad udp")
	badUDP[14+20+6] ^= 0x55
	trunc := rawUDP(tp, "truncated")
	binary.BigEndian.PutUint16(trunc[14+2:], uint16(len(trunc)-14+40)) // IP says 40 more bytes
	binary.BigEndian.PutUint16(trunc[14+10:], 0)
	binary.BigEndian.PutUint16(trunc[14+10:], frame.Checksum(trunc[14:34]))

	if vi.ReceiveSetDiscards(efvi.DefaultDiscards) != efvi.DefaultDiscards {
		t.Error("default discard mask")
	}
	for _, c := range []struct {
		name  string
		frame []byte
		typ   efvi.EventType
		sub   efvi.DiscardType
	}{
		{"good", good, efvi.EventRX, 0},
		{"bad ip checksum", badIP, efvi.EventRXDiscard, efvi.DiscardCsumBad},
		{"bad udp checksum, L4 not checked by default", badUDP, efvi.EventRX, 0},
		{"truncated", trunc, efvi.EventRXDiscard, efvi.DiscardTrunc},
	} {
		send(c.frame)
		e := next()
		if e.Type != c.typ || (c.typ == efvi.EventRXDiscard && e.DiscardType() != c.sub) {
			t.Errorf("%s: event %v sub %d, want %v sub %d", c.name, e.Type, e.Sub, c.typ, c.sub)
		}
		if !bytes.Equal(vi.RxFrame(&e), c.frame) {
			t.Errorf("%s: frame differs", c.name)
		}
	}
	vi.ReceiveSetDiscards(efvi.DefaultDiscards | efvi.DiscardL4CsumErr)
	send(badUDP)
	if e := next(); e.Type != efvi.EventRXDiscard || e.DiscardType() != efvi.DiscardCsumBad {
		t.Errorf("bad udp with L4 checking: %+v", e)
	}
	send(good)
	if e := next(); e.Type != efvi.EventRX {
		t.Errorf("good with L4 checking: %+v", e)
	}
	vi.ReceiveSetDiscards(0)
	send(badIP)
	if e := next(); e.Type != efvi.EventRX {
		t.Errorf("bad ip with no discards: %+v", e)
	}
	st, _ := vi.Stats()
	if st.RxDiscardCsum != 2 || st.RxDiscardTrunc != 1 {
		t.Errorf("stats %+v", st)
	}
	// Multicast flag.
	mc := rawUDP(tp, "mc")
	copy(mc[0:6], []byte{0x01, 0x00, 0x5e, 0x01, 0x02, 0x03})
	send(mc)
	if e := next(); e.Flags&efvi.FlagMulticast == 0 {
		t.Errorf("multicast frame without FlagMulticast: %+v", e)
	}
}

func TestSoftwareEvents(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{SWQueueSize: 4})
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				for vi.EventQPut(uint16(g*100+i)) != nil {
					time.Sleep(time.Microsecond)
				}
			}
		}(g)
	}
	got := map[uint16]int{}
	last := [2]int{-1, -1}
	evs := make([]efvi.Event, 3)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < 100 && time.Now().Before(deadline) {
		n := vi.EventQPoll(evs)
		for _, e := range evs[:n] {
			if e.Type != efvi.EventSW {
				t.Fatalf("unexpected %+v", e)
			}
			d := e.SWData()
			got[d]++
			g, i := int(d/100), int(d%100)
			if i <= last[g] {
				t.Errorf("producer %d: %d after %d (FIFO per producer)", g, i, last[g])
			}
			last[g] = i
		}
	}
	wg.Wait()
	if len(got) != 100 {
		t.Fatalf("got %d distinct SW events, want 100", len(got))
	}
	// Wait wakes on EventQPut from another goroutine.
	if got := waitWakes(t, vi, func() error { return vi.EventQPut(7) }); len(got) != 1 || got[0].SWData() != 7 {
		t.Fatalf("after wake: %+v", got)
	}
	full := 0
	for i := 0; i < 10; i++ {
		if errors.Is(vi.EventQPut(1), efvi.ErrAgain) {
			full++
		}
	}
	if full != 6 {
		t.Errorf("SW queue of 4: %d of 10 puts refused, want 6", full)
	}
}

func TestWait(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{})
	postAll(t, vi, 0, 8, 0)
	if err := vi.Prime(); err != nil {
		t.Fatal(err)
	}
	if err := vi.Wait(5 * time.Millisecond); !errors.Is(err, efvi.ErrTimeout) || !errors.Is(err, unix.ETIMEDOUT) {
		t.Fatalf("Wait on idle VI: %v, want ErrTimeout", err)
	}
	u := tp.ListenUDP(t, 0)
	if got := waitWakes(t, vi, func() error { return tp.SendTo(u, 9000, []byte("wake")) }); len(got) != 1 || got[0].Type != efvi.EventRX {
		t.Fatalf("after Wait: %+v", got)
	}
}

// waitWakes checks that vi.Wait blocks until wake has been called and then
// returns with an event ready. Wait runs in its own goroutine, the VI's only
// driver until it returns. The order is enforced, not slept for: that
// goroutine first checks that no event is ready; wake is called only once a
// thread of this process is blocked in ppoll(2) (only VI.Wait uses it here)
// and Wait has not returned; the goroutine records whether wake had been
// called when Wait returned. So a Wait that returns early, or never blocks,
// fails. It returns the events ready after Wait.
func waitWakes(t *testing.T, vi *efvi.VI, wake func() error) []efvi.Event {
	t.Helper()
	type result struct {
		err       error
		afterWake bool
		evs       []efvi.Event
	}
	var woken atomic.Bool
	readyBefore := make(chan bool)
	done := make(chan result, 1)
	go func() {
		readyBefore <- vi.EventQHasEvent()
		err := vi.Wait(10 * time.Second)
		r := result{err: err, afterWake: woken.Load()}
		evs := make([]efvi.Event, 8)
		r.evs = evs[:vi.EventQPoll(evs)]
		done <- r
	}()
	if <-readyBefore {
		t.Fatal("an event was ready before the wake-up: the test proves nothing")
	}
	for deadline := time.Now().Add(10 * time.Second); !blockedInPpoll(t); {
		if time.Now().After(deadline) {
			t.Fatal("Wait never blocked in ppoll(2) within 10 s")
		}
		select {
		case r := <-done:
			t.Fatalf("Wait returned (%v, events %+v) before blocking and before the wake-up", r.err, r.evs)
		case <-time.After(time.Millisecond):
		}
	}
	woken.Store(true)
	if err := wake(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Wait: %v", r.err)
	}
	if !r.afterWake {
		t.Fatalf("Wait returned before the wake-up (events then: %+v)", r.evs)
	}
	if len(r.evs) == 0 {
		t.Fatal("Wait returned nil with no event ready")
	}
	return r.evs
}

// blockedInPpoll reports whether a thread of this process is in ppoll(2).
func blockedInPpoll(t *testing.T) bool {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/syscall")
		if err != nil {
			continue // the thread ended
		}
		if f := strings.Fields(string(b)); len(f) > 0 && f[0] == strconv.Itoa(unix.SYS_PPOLL) {
			return true
		}
	}
	return false
}

func TestNoDescriptorDrops(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{})
	u := tp.ListenUDP(t, 0)
	for i := 0; i < 7; i++ {
		if err := tp.SendTo(u, 9000, []byte("dropped")); err != nil {
			t.Fatal(err)
		}
	}
	var st efvi.Stats
	deadline := time.Now().Add(5 * time.Second)
	for st.RxNoDesc < 7 && time.Now().Before(deadline) {
		var err error
		if st, err = vi.Stats(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if st.RxNoDesc != 7 {
		t.Fatalf("RxNoDesc %d, want 7 (%+v)", st.RxNoDesc, st)
	}
}

func TestOverflow(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{rx: 16, fill: 64}, efvi.Options{IdleKickAfter: time.Microsecond})
	postAll(t, vi, 0, 64, 0)
	u := tp.ListenUDP(t, 0)
	for i := 0; i < 40; i++ {
		if err := tp.SendTo(u, 9000, []byte("flood")); err != nil {
			t.Fatal(err)
		}
	}
	st := waitStat(t, vi, func(s efvi.Stats) bool { return s.RxRingFull >= 24 })
	evs := pollFor(t, vi, 17, nil)
	rx, oflow := 0, 0
	for _, e := range evs {
		switch e.Type {
		case efvi.EventRX:
			rx++
		case efvi.EventOflow:
			oflow++
		}
	}
	if rx != 16 || oflow != 1 {
		t.Fatalf("%d RX + %d OFLOW events (ring full %d), want 16 + 1", rx, oflow, st.RxRingFull)
	}
}

func waitStat(t *testing.T, vi *efvi.VI, ok func(efvi.Stats) bool) efvi.Stats {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := vi.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if ok(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReset(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{IdleKickAfter: 10 * time.Microsecond})
	postAll(t, vi, 0, 8, 0)
	if err := testnet.DeleteLink(tp.Port); err != nil {
		t.Fatal(err)
	}
	evs := pollFor(t, vi, 1, nil)
	if len(evs) != 1 || evs[0].Type != efvi.EventReset {
		t.Fatalf("after deleting the device: %+v, want one RESET", evs)
	}
	if n := vi.EventQPoll(evs); n != 0 {
		t.Errorf("poll after RESET returned %d events", n)
	}
	if err := vi.ReceivePost(0, 1); !errors.Is(err, efvi.ErrReset) {
		t.Errorf("ReceivePost after RESET: %v", err)
	}
	if err := vi.Transmit(0, 60, 1); !errors.Is(err, efvi.ErrReset) {
		t.Errorf("Transmit after RESET: %v", err)
	}
	if err := vi.Wait(time.Millisecond); !errors.Is(err, efvi.ErrReset) {
		t.Errorf("Wait after RESET: %v", err)
	}
}

func TestWaitSeesReset(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{IdleKickAfter: -1})
	if got := waitWakes(t, vi, func() error { return testnet.DeleteLink(tp.Port) }); len(got) != 1 || got[0].Type != efvi.EventReset {
		t.Fatalf("%+v, want RESET", got)
	}
}

func TestBadInput(t *testing.T) {
	tp := xsktest.New(t)
	vi := newVI(t, tp, agentCfg{}, efvi.Options{})
	if err := vi.ReceiveInit(efvi.Addr(len(vi.Memory().Bytes())), 1); err == nil {
		t.Error("ReceiveInit outside the region accepted")
	}
	if vi.Memory().Buf(-1) != nil || vi.Memory().Buf(vi.Memory().NumBufs()) != nil || vi.Memory().At(efvi.Addr(len(vi.Memory().Bytes())-1), 2) != nil {
		t.Error("out-of-range buffer access returned memory")
	}
	for i := 0; i < vi.ReceiveCapacity(); i++ {
		if err := vi.ReceiveInit(vi.Memory().Addr(i), 0); err != nil {
			t.Fatalf("ReceiveInit %d: %v", i, err)
		}
	}
	if err := vi.ReceiveInit(0, 0); !errors.Is(err, efvi.ErrAgain) || !errors.Is(err, unix.EAGAIN) {
		t.Errorf("ReceiveInit on a full ring: %v", err)
	}
	if _, err := efvi.NewSoftwareVI(-1, vi.Memory(), xsk.Geometry{}, efvi.Options{}); err == nil {
		t.Error("NewSoftwareVI with an empty geometry accepted")
	}
	if err := vi.Close(); err != nil {
		t.Fatal(err)
	}
	if err := vi.ReceivePost(0, 0); !errors.Is(err, efvi.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	if vi.EventQPoll(make([]efvi.Event, 4)) != 0 {
		t.Error("poll after Close returned events")
	}
}
