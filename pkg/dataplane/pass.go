package dataplane

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// AttachPassXDP attaches an XDP_PASS program to ifindex (in the calling
// thread's network namespace: run it inside the namespace, e.g. with
// testnet's NS.Do) and returns the link; Close detaches it.
//
// Why: a veth drops every frame another device XDP-redirects into it
// (ndo_xdp_xmit) unless its PEER has an XDP program, silently (watch the
// xdp:xdp_devmap_xmit tracepoint). The data plane redirects VI transmissions
// into the port, so when the port is a veth (tests, or a port wired to a
// container), the far end of the port needs this.
func AttachPassXDP(ifindex int) (io.Closer, error) {
	prog, err := loadProg("efvi_pass", ebpf.XDP, passXDP())
	if err != nil {
		return nil, err
	}
	defer prog.Close() // the link holds its own reference
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex})
	if err != nil {
		return nil, fmt.Errorf("attach XDP_PASS to ifindex %d: %w", ifindex, err)
	}
	return l, nil
}
