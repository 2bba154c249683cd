// Package xsktest builds a small real topology for AF_XDP tests, so pkg/xsk
// and pkg/efvi can be tested without the agent's data plane: a "fabric"
// network namespace joined by a veth pair to a "port" end in the test's own
// namespace. The port end runs a tiny XDP program (written with cilium/ebpf
// asm) that redirects IPv4 frames into an XSKMAP keyed by rx queue index
// (fallback XDP_PASS); the fabric end runs XDP_PASS so that frames
// redirected or transmitted towards it are not silently dropped by veth.
//
// It is test support: every helper takes a testing.TB and registers cleanup.
package xsktest

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
)

// Topo is the test topology.
type Topo struct {
	Fabric *testnet.NS
	Port   testnet.Veth // in the test's namespace; bind XSKs here (queue 0)
	Peer   testnet.Veth // in Fabric
	XSKMap *ebpf.Map
	// PortIP is the address the VI owns (not configured on any kernel
	// interface; Fabric has a static neighbour entry for it -> Port.MAC).
	PortIP netip.Addr
	// PeerIP is configured on Peer.
	PeerIP netip.Addr
}

// New builds the topology; everything is removed when the test ends.
func New(t testing.TB) *Topo {
	t.Helper()
	testnet.RequireRoot(t)
	var rb [1]byte
	_, _ = rand.Read(rb[:])
	sub := 1 + int(rb[0])%250
	tp := &Topo{
		PortIP: netip.AddrFrom4([4]byte{10, 213, byte(sub), 2}),
		PeerIP: netip.AddrFrom4([4]byte{10, 213, byte(sub), 1}),
	}
	tp.Fabric = testnet.NewNS(t)
	tp.Port, tp.Peer = testnet.VethPair(t, nil, tp.Fabric)
	disableIPv6(t, "", tp.Port.Name)
	if err := tp.Fabric.Do(func() error { return disableIPv6Err(tp.Peer.Name) }); err != nil {
		t.Fatalf("fabric: %v", err)
	}
	if err := tp.Peer.AddAddr(tp.PeerIP.String() + "/24"); err != nil {
		t.Fatal(err)
	}
	h, err := tp.Fabric.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.NeighAdd(&netlink.Neigh{
		LinkIndex:    tp.Peer.Index,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(tp.PortIP.AsSlice()),
		HardwareAddr: net.HardwareAddr(tp.Port.MAC),
	}); err != nil {
		t.Fatalf("fabric neighbour %s -> %v: %v", tp.PortIP, tp.Port.MAC, err)
	}

	tp.XSKMap, err = ebpf.NewMap(&ebpf.MapSpec{Name: "efvt_xsks", Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 4})
	if err != nil {
		t.Fatalf("create xskmap: %v", err)
	}
	t.Cleanup(func() { tp.XSKMap.Close() })
	redirect, err := RedirectProgram(tp.XSKMap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redirect.Close() })
	l, err := link.AttachXDP(link.XDPOptions{Program: redirect, Interface: tp.Port.Index})
	if err != nil {
		t.Fatalf("attach XDP redirect to %s: %v", tp.Port.Name, err)
	}
	t.Cleanup(func() { l.Close() })

	pass, err := PassProgram()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pass.Close() })
	if err := tp.Fabric.Do(func() error {
		pl, err := link.AttachXDP(link.XDPOptions{Program: pass, Interface: tp.Peer.Index})
		if err != nil {
			return fmt.Errorf("attach XDP_PASS to %s: %w", tp.Peer.Name, err)
		}
		t.Cleanup(func() { pl.Close() })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return tp
}

func disableIPv6(t testing.TB, _ string, ifname string) {
	t.Helper()
	if err := disableIPv6Err(ifname); err != nil {
		t.Fatal(err)
	}
}

func disableIPv6Err(ifname string) error {
	p := "/proc/sys/net/ipv6/conf/" + ifname + "/disable_ipv6"
	if err := os.WriteFile(p, []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disable IPv6 on %s: %w", ifname, err)
	}
	return nil
}

// RedirectProgram returns an XDP program that redirects IPv4 frames to
// xsks[rx_queue_index] (XDP_PASS if no socket there) and passes the rest.
func RedirectProgram(xsks *ebpf.Map) (*ebpf.Program, error) {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, 0x0008, "pass"),       // htons(ETH_P_IP) as loaded on little endian
		asm.LoadMem(asm.R2, asm.R6, 16, asm.Word), // rx_queue_index
		asm.LoadMapPtr(asm.R1, xsks.FD()),
		asm.Mov.Imm(asm.R3, 2), // XDP_PASS when the slot is empty
		asm.FnRedirectMap.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"),
		asm.Return(),
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "efvt_redirect", Type: ebpf.XDP, Instructions: insns, License: "Dual MIT/GPL"})
	if err != nil {
		return nil, fmt.Errorf("load XDP redirect program: %w", err)
	}
	return p, nil
}

// PassProgram returns an XDP program that returns XDP_PASS.
func PassProgram() (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "efvt_pass", Type: ebpf.XDP, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load XDP pass program: %w", err)
	}
	return p, nil
}

// Insert puts the socket fd into the XSKMAP at queue.
func (tp *Topo) Insert(queue uint32, xskFD int) error {
	if err := tp.XSKMap.Put(queue, uint32(xskFD)); err != nil {
		return fmt.Errorf("xskmap[%d] = fd %d: %w", queue, xskFD, err)
	}
	return nil
}

// socketIn opens a socket inside the fabric namespace.
func (tp *Topo) socketIn(domain, typ, proto int) (int, error) {
	fd := -1
	err := tp.Fabric.Do(func() error {
		var err error
		fd, err = unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		return err
	})
	return fd, err
}

// UDP is a kernel UDP socket in the fabric namespace bound to PeerIP:port.
type UDP struct {
	FD   int
	Port uint16
}

// ListenUDP opens a UDP socket in the fabric bound to PeerIP:port (0 = any
// port), closed at test end.
func (tp *Topo) ListenUDP(t testing.TB, port uint16) *UDP {
	t.Helper()
	fd, err := tp.socketIn(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatalf("fabric udp socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: tp.PeerIP.As4(), Port: int(port)}); err != nil {
		t.Fatalf("fabric udp bind %s:%d: %v", tp.PeerIP, port, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return &UDP{FD: fd, Port: uint16(sa.(*unix.SockaddrInet4).Port)}
}

// SendTo sends one datagram to PortIP:port.
func (tp *Topo) SendTo(u *UDP, port uint16, payload []byte) error {
	return unix.Sendto(u.FD, payload, 0, &unix.SockaddrInet4{Addr: tp.PortIP.As4(), Port: int(port)})
}

// Recv receives one datagram, waiting at most timeout.
func (u *UDP) Recv(buf []byte, timeout time.Duration) (int, netip.AddrPort, error) {
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(u.FD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, netip.AddrPort{}, err
	}
	n, from, err := unix.Recvfrom(u.FD, buf, 0)
	if err != nil {
		return 0, netip.AddrPort{}, fmt.Errorf("fabric udp recv on port %d: %w", u.Port, err)
	}
	sa, _ := from.(*unix.SockaddrInet4)
	var ap netip.AddrPort
	if sa != nil {
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	}
	return n, ap, nil
}

// Raw is an AF_PACKET socket on the fabric end, for sending crafted frames.
type Raw struct {
	FD      int
	ifindex int
}

// RawSocket opens an AF_PACKET socket on Peer, closed at test end.
func (tp *Topo) RawSocket(t testing.TB) *Raw {
	t.Helper()
	fd, err := tp.socketIn(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatalf("fabric packet socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &Raw{FD: fd, ifindex: tp.Peer.Index}
}

// Send transmits one complete Ethernet frame out of Peer (towards Port).
func (r *Raw) Send(frame []byte) error {
	return unix.Sendto(r.FD, frame, 0, &unix.SockaddrLinklayer{Ifindex: r.ifindex, Halen: 6})
}
