// Package efvitool is the code the ef_vi sample tools (efsink, efsend,
// eflatency) share: opening a VI through the agent, swapping a UDP frame into
// its reply, attributing received frames to the filters that asked for them,
// hex dumps and multicast MACs. Nothing here allocates per packet.
package efvitool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// Session is one VI opened through the node agent: the driver session, the
// VI and its memory region.
type Session struct {
	Driver *efvi.Driver
	// VI is a software or a hardware VI, whichever the allocation is on.
	VI  efvi.VirtualInterface
	Mem *efvi.RegisteredMemory
	// Info is what the agent said about the allocation (pod IPs, port MAC).
	Info efvi.AllocationInfo
}

// Open connects to the agent's allocation socket (socket; "" means
// $EFVI_SOCKET, which the agent sets in a pod) and allocates a PD, nbufs
// packet buffers and a VI with the default ring sizes.
func Open(ctx context.Context, socket string, nbufs int) (*Session, error) {
	if socket == "" {
		if _, err := efvi.SelectBackend(os.Getenv); err != nil {
			return nil, fmt.Errorf("%w; on a node, pass -socket /path/to/broker.sock (the allocation's directory under the agent's run dir)", err)
		}
	}
	d, err := efvi.DialAgent(ctx, socket)
	if err != nil {
		return nil, fmt.Errorf("connect to the agent: %w", err)
	}
	pd, err := d.AllocPD(ctx, efvi.PDRequest{VLAN: -1})
	if err != nil {
		d.Close()
		return nil, err
	}
	mem, err := pd.RegisterMemory(ctx, nbufs)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("register %d buffers: %w", nbufs, err)
	}
	vi, err := pd.AllocVirtualInterface(ctx, mem, efvi.VIRequest{EvqCap: -1, RxqCap: -1, TxqCap: -1}, efvi.Options{})
	if err != nil {
		mem.Close()
		d.Close()
		return nil, fmt.Errorf("allocate a VI: %w", err)
	}
	return &Session{Driver: d, VI: vi, Mem: mem, Info: d.Info()}, nil
}

// AddFilter asks for spec on the session's VI. On a hardware pool the agent
// installs the VI's filters itself (from the pod's filter annotation) and
// refuses requests with EOPNOTSUPP: that is reported to log and is not an
// error, so a tool runs with the same arguments on either backend.
func (s *Session) AddFilter(ctx context.Context, spec filter.Spec, log io.Writer) error {
	_, err := s.VI.FilterAdd(ctx, spec)
	if err != nil && s.VI.Backend() == efvi.BackendHardware && errors.Is(err, unix.EOPNOTSUPP) {
		fmt.Fprintf(log, "note: %s is not requested from here: on a hardware pool the agent installs the VI's filters (list them in the pod's filter annotation)\n", spec)
		return nil
	}
	return err
}

// PodIP is the pod's first IP, the default host of "udp:PORT" filter specs
// and the source of frames the VI sends.
func (s *Session) PodIP() (netip.Addr, error) {
	if len(s.Info.Addrs) == 0 {
		return netip.Addr{}, errors.New("the agent knows no IP for this pod yet (is efvi-cni chained in the node's CNI config?)")
	}
	return s.Info.Addrs[0], nil
}

// Close frees the VI (and its filters), the memory and the session.
func (s *Session) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.VI.Close()
	if ferr := s.Mem.Free(ctx); err == nil {
		err = ferr
	}
	if cerr := s.Driver.Close(); err == nil {
		err = cerr
	}
	return err
}

// SwapUDP turns a received UDP frame into its reply in place: MACs, IPs and
// ports swap. The swaps keep every sum, but frames a local kernel sent over a
// veth can arrive with a partial (offload) UDP checksum, so it is computed
// afresh.
func SwapUDP(b []byte, p *frame.Packet) {
	for i := 0; i < 6; i++ {
		b[i], b[6+i] = b[6+i], b[i]
	}
	l3 := p.L3Off
	if p.IPVersion == 4 {
		for i := 0; i < 4; i++ {
			b[l3+12+i], b[l3+16+i] = b[l3+16+i], b[l3+12+i]
		}
	} else {
		for i := 0; i < 16; i++ {
			b[l3+8+i], b[l3+24+i] = b[l3+24+i], b[l3+8+i]
		}
	}
	l4 := p.L4Off
	b[l4], b[l4+2] = b[l4+2], b[l4]
	b[l4+1], b[l4+3] = b[l4+3], b[l4+1]
	if p.IPVersion == 4 {
		frame.SetUDPChecksum4(b[l3:l4], b[l4:p.End])
	} else {
		frame.SetUDPChecksum6(b[l3:l4], b[l4:p.End])
	}
}

// MulticastMAC is the Ethernet group address of an IP multicast group
// (RFC 1112: 01:00:5e + the low 23 bits; RFC 2464: 33:33 + the low 32 bits).
// ok is false when ip is not multicast.
func MulticastMAC(ip netip.Addr) (mac frame.MAC, ok bool) {
	if !ip.IsMulticast() {
		return mac, false
	}
	if ip.Is4() {
		a := ip.As4()
		return frame.MAC{0x01, 0x00, 0x5e, a[1] & 0x7f, a[2], a[3]}, true
	}
	a := ip.As16()
	return frame.MAC{0x33, 0x33, a[12], a[13], a[14], a[15]}, true
}

// ParseMAC parses an Ethernet MAC (aa:bb:cc:dd:ee:ff), saying which flag was
// wrong.
func ParseMAC(flagName, text string) (frame.MAC, error) {
	m, err := net.ParseMAC(text)
	if err != nil || len(m) != 6 {
		return frame.MAC{}, fmt.Errorf("%s %q: want a 6-byte MAC like 02:00:00:00:00:01 (the next hop's; ARP is the app's job in ef_vi)", flagName, text)
	}
	return frame.MAC(m), nil
}
