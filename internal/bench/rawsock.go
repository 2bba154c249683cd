package bench

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/xsk"
	"github.com/kube-efvi/kube-efvi/pkg/xsk/xsktest"
)

// rawSocket is a plain AF_XDP socket on queue 0 of one netdev, with the XDP
// program that redirects IPv4 to it: the load generator on the wire and the
// raw AF_XDP contender on the port are both one.
type rawSocket struct {
	mem   *os.File
	sock  *xsk.Socket
	rings *xsk.Rings
	xsks  *ebpf.Map
	prog  *ebpf.Program
	link  link.Link
}

// rawSocketConfig says where and how big.
type rawSocketConfig struct {
	name     string      // for errors and object names
	ns       *testnet.NS // the netdev's namespace; nil = the caller's
	ifindex  int
	ifname   string
	frames   uint32 // UMEM chunks; the first rx are posted to the fill ring
	rx, tx   uint32
	txBudget uint32
	detached bool // do not attach the program (the caller switches it in)
}

// openRawSocket creates the socket, posts chunks 0..rx-1 to its fill ring,
// and only then attaches the redirect program, so no frame meets an empty
// ring.
func openRawSocket(c rawSocketConfig) (r *rawSocket, err error) {
	r = &rawSocket{}
	opened := r // returns below set r to nil on error
	defer func() {
		if err != nil {
			opened.Close()
			r = nil
		}
	}()
	u := xsk.UMEMConfig{NumFrames: c.frames}
	if r.mem, err = xsk.NewMemfd("efvi-bench-"+c.name, u.Size()); err != nil {
		return nil, fmt.Errorf("%s memory: %w", c.name, err)
	}
	if r.xsks, err = ebpf.NewMap(&ebpf.MapSpec{Name: "efvb_" + c.name, Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 1}); err != nil {
		return nil, fmt.Errorf("%s xskmap: %w", c.name, err)
	}
	if r.prog, err = xsktest.RedirectProgram(r.xsks); err != nil {
		return nil, fmt.Errorf("%s XDP program: %w", c.name, err)
	}
	inNS := func(fn func() error) error {
		if c.ns == nil {
			return fn()
		}
		return c.ns.Do(fn)
	}
	if err = inNS(func() (err error) {
		r.sock, err = xsk.Create(xsk.Config{Ifindex: c.ifindex, UMEM: u, Mem: r.mem,
			RxSize: c.rx, TxSize: c.tx, FillSize: c.rx, CompSize: c.tx, TxBudget: c.txBudget})
		return err
	}); err != nil {
		return nil, fmt.Errorf("%s socket on %s queue 0: %w", c.name, c.ifname, err)
	}
	if r.rings, err = xsk.Map(int(r.sock.FD.Fd()), int(r.mem.Fd()), r.sock.Geometry); err != nil {
		return nil, fmt.Errorf("map %s rings: %w", c.name, err)
	}
	if err = r.xsks.Put(uint32(0), uint32(r.sock.FD.Fd())); err != nil {
		return nil, fmt.Errorf("%s xskmap[0]: %w", c.name, err)
	}
	idx, ok := r.rings.Fill.Reserve(c.rx)
	if !ok {
		return nil, fmt.Errorf("%s fill ring: cannot reserve every RX chunk", c.name)
	}
	for i := uint32(0); i < c.rx; i++ {
		r.rings.Fill.Set(idx+i, uint64(i)*chunk)
	}
	r.rings.Fill.Submit()
	if c.detached {
		return r, nil
	}
	if err = inNS(func() (err error) {
		r.link, err = link.AttachXDP(link.XDPOptions{Program: r.prog, Interface: c.ifindex})
		return err
	}); err != nil {
		return nil, fmt.Errorf("attach XDP redirect to %s (does something else own its XDP hook?): %w", c.ifname, err)
	}
	return r, nil
}

// Close detaches the program and frees the socket and its memory.
func (r *rawSocket) Close() error {
	var errs []error
	if r.link != nil {
		errs = append(errs, r.link.Close())
	}
	if r.rings != nil {
		errs = append(errs, r.rings.Close())
	}
	if r.sock != nil {
		errs = append(errs, r.sock.Close())
	}
	if r.prog != nil {
		errs = append(errs, r.prog.Close())
	}
	if r.xsks != nil {
		errs = append(errs, r.xsks.Close())
	}
	if r.mem != nil {
		errs = append(errs, r.mem.Close())
	}
	return errors.Join(errs...)
}
