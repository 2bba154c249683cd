package xsk_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
	"github.com/kube-efvi/kube-efvi/pkg/xsk/xsktest"
)

func TestUMEMConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg xsk.UMEMConfig
		ok  bool
	}{
		{xsk.UMEMConfig{NumFrames: 64}, true},
		{xsk.UMEMConfig{NumFrames: 0}, false},
		{xsk.UMEMConfig{NumFrames: 3}, false},
		{xsk.UMEMConfig{FrameSize: 3000, NumFrames: 64}, false},
		{xsk.UMEMConfig{FrameSize: 1024, NumFrames: 64}, false},
		{xsk.UMEMConfig{FrameSize: 2048, Headroom: 2000, NumFrames: 64}, false},
	} {
		err := c.cfg.Validate()
		if (err == nil) != c.ok {
			t.Errorf("%+v: err=%v, want ok=%v", c.cfg, err, c.ok)
		}
	}
}

func TestMemfdSealed(t *testing.T) {
	f, err := xsk.NewMemfd("efvt-test", 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, size := range []int64{1 << 12, 1 << 20} {
		if err := unix.Ftruncate(int(f.Fd()), size); !errors.Is(err, unix.EPERM) {
			t.Errorf("ftruncate(%d) on sealed memfd: %v, want EPERM", size, err)
		}
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals&xsk.Seals != xsk.Seals {
		t.Errorf("seals %#x, %v; want %#x", seals, err, xsk.Seals)
	}
	if flags, _ := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Error("memfd is not close-on-exec")
	}
	if _, err := xsk.NewMemfd("bad", 1000); err == nil {
		t.Error("NewMemfd(1000) succeeded; want page-multiple error")
	}
}

func TestMapRejectsNonXSK(t *testing.T) {
	f, err := xsk.NewMemfd("efvt-test", 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g := xsk.Geometry{FrameSize: 2048, NumFrames: 32, RxSize: 64, TxSize: 64, FillSize: 64, CompSize: 64}
	if _, err := xsk.Map(int(f.Fd()), int(f.Fd()), g); err == nil {
		t.Fatal("Map on a memfd as socket succeeded")
	}
	g.RxSize = 3
	if _, err := xsk.Map(int(f.Fd()), int(f.Fd()), g); err == nil {
		t.Fatal("Map with ring size 3 succeeded")
	}
}

// newSocket creates memfd + socket on tp.Port queue 0 and maps it.
func newSocket(t *testing.T, tp *xsktest.Topo, frames uint32) (*xsk.Socket, *xsk.Rings) {
	t.Helper()
	u := xsk.UMEMConfig{NumFrames: frames}
	mem, err := xsk.NewMemfd("efvt-umem", u.Size())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	s, err := xsk.Create(xsk.Config{Ifindex: tp.Port.Index, UMEM: u, Mem: mem, RxSize: 256, TxSize: 256, FillSize: 256, CompSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if flags, _ := unix.FcntlInt(s.FD.Fd(), unix.F_GETFD, 0); flags&unix.FD_CLOEXEC == 0 {
		t.Error("xsk fd is not close-on-exec")
	}
	if err := tp.Insert(0, int(s.FD.Fd())); err != nil {
		t.Fatal(err)
	}
	r, err := xsk.Map(int(s.FD.Fd()), int(mem.Fd()), s.Geometry)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return s, r
}

func fill(t *testing.T, r *xsk.Rings, n uint32) {
	t.Helper()
	idx, ok := r.Fill.Reserve(n)
	if !ok {
		t.Fatalf("reserve %d fill slots failed (free %d)", n, r.Fill.Free(n))
	}
	for i := uint32(0); i < n; i++ {
		r.Fill.Set(idx+i, uint64(i)*uint64(r.Geometry.FrameSize))
	}
	r.Fill.Submit()
}

func TestRxTx(t *testing.T) {
	tp := xsktest.New(t)
	s, r := newSocket(t, tp, 64)
	fill(t, r, 32)
	u := tp.ListenUDP(t, 0)
	const n = 10
	for i := 0; i < n; i++ {
		if err := tp.SendTo(u, 9000, []byte(fmt.Sprintf("hello %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	var last xsk.Desc
	for got < n && time.Now().Before(deadline) {
		idx, k := r.Rx.Peek(16)
		for j := uint32(0); j < k; j++ {
			d := r.Rx.Get(idx + j)
			frame := r.UMEM[d.Addr : d.Addr+uint64(d.Len)]
			want := []byte(fmt.Sprintf("hello %d", got))
			if len(frame) < 42 || !bytes.Equal(frame[42:], want) {
				t.Fatalf("frame %d: payload %q, want %q", got, frame[min(42, len(frame)):], want)
			}
			if d.Addr%uint64(s.Geometry.FrameSize) < 256 {
				t.Errorf("frame at %#x: expected XDP_PACKET_HEADROOM in front", d.Addr)
			}
			last = *d
			got++
		}
		r.Rx.Release(k)
	}
	if got != n {
		t.Fatalf("received %d of %d frames", got, n)
	}

	// TX: echo the last frame back to the fabric socket in place (swap
	// addresses and ports).
	frame := r.UMEM[last.Addr : last.Addr+uint64(last.Len)]
	copy(frame[0:6], tp.Peer.MAC)
	copy(frame[6:12], tp.Port.MAC)
	// swap IPs (checksum unchanged by a swap) and ports
	var ip [4]byte
	copy(ip[:], frame[26:30])
	copy(frame[26:30], frame[30:34])
	copy(frame[30:34], ip[:])
	var port [2]byte
	copy(port[:], frame[34:36])
	copy(frame[34:36], frame[36:38])
	copy(frame[36:38], port[:])
	// The fabric kernel sent this with a partial (offloaded) UDP checksum,
	// which veth does not complete: send it back with "no checksum".
	frame[40], frame[41] = 0, 0
	idx, ok := r.Tx.Reserve(1)
	if !ok {
		t.Fatal("tx reserve failed")
	}
	r.Tx.Set(idx, last.Addr, last.Len, 0)
	r.Tx.Submit()
	if !r.Tx.NeedWakeup() {
		t.Log("tx ring does not ask for a wakeup (unexpected in copy mode)")
	}
	if e := xsk.KickTx(r.FD); e != 0 {
		t.Fatalf("kick tx: %v", e)
	}
	buf := make([]byte, 2048)
	nb, from, err := u.Recv(buf, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("hello %d", n-1); string(buf[:nb]) != want || from.Port() != 9000 {
		t.Fatalf("fabric got %q from %v, want %q from port 9000", buf[:nb], from, want)
	}
	deadline = time.Now().Add(5 * time.Second)
	for r.Comp.Available() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cidx, k := r.Comp.Peek(8)
	if k != 1 || r.Comp.Get(cidx) != last.Addr {
		t.Fatalf("completion: %d entries, first %#x; want 1 x %#x", k, r.Comp.Get(cidx), last.Addr)
	}
	r.Comp.Release(k)

	var st xsk.Stats
	if err := xsk.Statistics(r.FD, &st); err != nil {
		t.Fatal(err)
	}
	if st.RxInvalidDescs != 0 || st.TxInvalidDescs != 0 {
		t.Errorf("stats %+v: unexpected invalid descriptors", st)
	}
}

func TestFillEmptyCounted(t *testing.T) {
	tp := xsktest.New(t)
	_, r := newSocket(t, tp, 64)
	u := tp.ListenUDP(t, 0)
	for i := 0; i < 5; i++ {
		if err := tp.SendTo(u, 9000, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	var st xsk.Stats
	deadline := time.Now().Add(5 * time.Second)
	for st.RxFillRingEmptyDescs < 5 && time.Now().Before(deadline) {
		if err := xsk.Statistics(r.FD, &st); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	if st.RxFillRingEmptyDescs != 5 {
		t.Fatalf("fill-ring-empty drops %d, want 5 (%+v)", st.RxFillRingEmptyDescs, st)
	}
}

func TestSharedUMEM(t *testing.T) {
	tp := xsktest.New(t)
	s1, _ := newSocket(t, tp, 64)
	// A second veth pair in the same fabric, sharing the first socket's UMEM.
	a, _ := testnet.VethPair(t, nil, tp.Fabric)
	s2, err := xsk.Create(xsk.Config{Ifindex: a.Index, UMEM: xsk.UMEMConfig{NumFrames: 64}, SharedUMEMFD: int(s1.FD.Fd()), RxSize: 64, TxSize: xsk.NoRing, FillSize: 64, CompSize: 64})
	if err != nil {
		t.Fatalf("shared umem: %v", err)
	}
	defer s2.Close()
	if s2.Geometry.BindFlags&unix.XDP_SHARED_UMEM == 0 {
		t.Errorf("bind flags %#x lack XDP_SHARED_UMEM", s2.Geometry.BindFlags)
	}
}
