package efvi_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
	"github.com/kube-efvi/kube-efvi/pkg/xsk/xsktest"
)

// localBackend is an in-process stand-in for the broker client: it does
// the agent's work directly on the test topology. Filters are the data
// plane's job and are refused.
type localBackend struct {
	tp      *xsktest.Topo
	mems    map[efvi.MemoryHandle]*os.File
	nextMem efvi.MemoryHandle
	freed   []efvi.VIHandle
	closed  bool
}

func (l *localBackend) AllocPD(ctx context.Context, req efvi.PDRequest) (efvi.PDHandle, error) {
	if req.Interface != "" && req.Interface != l.tp.Port.Name {
		return 0, fmt.Errorf("no interface %q: %w", req.Interface, unix.ENODEV)
	}
	return 1, nil
}

func (l *localBackend) RegisterMemory(ctx context.Context, pd efvi.PDHandle, nbufs int) (efvi.MemoryGrant, error) {
	u := xsk.UMEMConfig{NumFrames: uint32(nbufs)}
	if err := u.Validate(); err != nil {
		return efvi.MemoryGrant{}, err
	}
	f, err := xsk.NewMemfd("efvt-local", u.Size())
	if err != nil {
		return efvi.MemoryGrant{}, err
	}
	l.nextMem++
	l.mems[l.nextMem] = f
	dup, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return efvi.MemoryGrant{}, err
	}
	return efvi.MemoryGrant{Handle: l.nextMem, File: os.NewFile(uintptr(dup), "mem"), NumBufs: nbufs, BufSize: 2048}, nil
}

func (l *localBackend) AllocVI(ctx context.Context, pd efvi.PDHandle, mem efvi.MemoryHandle, req efvi.VIRequest) (efvi.VIGrant, error) {
	f := l.mems[mem]
	if f == nil {
		return efvi.VIGrant{}, fmt.Errorf("no memory %d: %w", mem, unix.EINVAL)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return efvi.VIGrant{}, err
	}
	s, err := xsk.Create(xsk.Config{Ifindex: l.tp.Port.Index, UMEM: xsk.UMEMConfig{NumFrames: uint32(st.Size / 2048)}, Mem: f})
	if err != nil {
		return efvi.VIGrant{}, err
	}
	if err := l.tp.Insert(0, int(s.FD.Fd())); err != nil {
		s.Close()
		return efvi.VIGrant{}, err
	}
	return efvi.VIGrant{Handle: 9, File: s.FD, Geometry: s.Geometry, Instance: 0, MAC: [6]byte(l.tp.Port.MAC), MTU: 1500}, nil
}

func (l *localBackend) FilterAdd(ctx context.Context, vi efvi.VIHandle, spec filter.Spec) (efvi.FilterCookie, error) {
	return 0, unix.EOPNOTSUPP
}
func (l *localBackend) FilterDel(ctx context.Context, vi efvi.VIHandle, c efvi.FilterCookie) error {
	return unix.EOPNOTSUPP
}
func (l *localBackend) VIStats(ctx context.Context, vi efvi.VIHandle) (map[string]uint64, error) {
	return map[string]uint64{"vi": uint64(vi)}, nil
}
func (l *localBackend) FreeVI(ctx context.Context, vi efvi.VIHandle) error {
	l.freed = append(l.freed, vi)
	return nil
}
func (l *localBackend) FreeMemory(ctx context.Context, m efvi.MemoryHandle) error {
	if f := l.mems[m]; f != nil {
		delete(l.mems, m)
		return f.Close()
	}
	return unix.EINVAL
}
func (l *localBackend) FreePD(ctx context.Context, pd efvi.PDHandle) error { return nil }
func (l *localBackend) Close() error {
	l.closed = true
	for h := range l.mems {
		_ = l.FreeMemory(context.Background(), h)
	}
	return nil
}

func TestDriverFlow(t *testing.T) {
	tp := xsktest.New(t)
	ctx := context.Background()
	be := &localBackend{tp: tp, mems: map[efvi.MemoryHandle]*os.File{}}
	if _, err := efvi.Open(nil); err == nil {
		t.Error("Open(nil) succeeded")
	}
	d, err := efvi.Open(be)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.AllocPD(ctx, efvi.PDRequest{Interface: "nope"}); !errors.Is(err, unix.ENODEV) {
		t.Errorf("AllocPD on a missing interface: %v", err)
	}
	pd, err := d.AllocPD(ctx, efvi.PDRequest{VLAN: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pd.RegisterMemory(ctx, 3); err == nil {
		t.Error("RegisterMemory(3 buffers) accepted (not a page multiple)")
	}
	mem, err := pd.RegisterMemory(ctx, 256)
	if err != nil {
		t.Fatal(err)
	}
	vi, err := pd.AllocVI(ctx, mem, efvi.VIRequest{EvqCap: -1, RxqCap: -1, TxqCap: -1}, efvi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if vi.MAC() != [6]byte(tp.Port.MAC) || vi.MTU() != 1500 {
		t.Errorf("MAC %v MTU %d", vi.MAC(), vi.MTU())
	}
	if _, err := vi.FilterAdd(ctx, filter.Spec{}); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("FilterAdd: %v", err)
	}
	postAll(t, vi, 0, 16, 100)
	u := tp.ListenUDP(t, 0)
	if err := tp.SendTo(u, 9000, []byte("via driver")); err != nil {
		t.Fatal(err)
	}
	evs := pollFor(t, vi, 1, nil)
	if len(evs) != 1 || evs[0].Type != efvi.EventRX || evs[0].RqID < 100 {
		t.Fatalf("events %+v", evs)
	}
	if err := vi.Close(); err != nil {
		t.Fatal(err)
	}
	if len(be.freed) != 1 || be.freed[0] != 9 {
		t.Errorf("backend FreeVI calls %v", be.freed)
	}
	if err := mem.Free(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pd.Free(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil || !be.closed {
		t.Fatal(err)
	}
}
