// Package fabric builds the e2e "fabric": the stand-in for the network a
// Solarflare port is cabled to. A veth pair joins a node port in the root
// namespace (Port, default efvi0, 10.210.0.1/24) to its far end inside a
// named network namespace (NS/Peer, default efvi-fabric/fabric0,
// 10.210.0.2/24). The agent runs its data plane on the port; tests send and
// receive from inside the namespace (`ip netns exec efvi-fabric ...`).
//
// The far end carries an XDP_PASS program (pkg/dataplane.AttachPassXDP),
// pinned so it outlives the process that attached it: a veth silently drops
// every frame another device XDP-redirects into it unless its peer has an
// XDP program, and the data plane redirects VI transmissions into the port.
//
// Traffic stays on this machine: only these two namespaces and the
// addresses assigned here.
package fabric

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
)

// Config names the fabric. Zero values take the defaults.
type Config struct {
	NS       string // network namespace of the far end
	Port     string // node port (root namespace)
	Peer     string // far end (in NS)
	PortAddr string // CIDR on Port
	PeerAddr string // CIDR on Peer
	// PinPath is where the far end's XDP link is pinned (bpffs).
	PinPath string
	// Routes are prefixes the fabric reaches through the port (pod
	// addresses: traffic to a pod's IP enters the node on the port, where
	// the data plane steers it to the pod's VI). Nil: DefaultRoutes.
	Routes []string
}

// Defaults.
const (
	DefaultNS       = "efvi-fabric"
	DefaultPort     = "efvi0"
	DefaultPeer     = "fabric0"
	DefaultPortAddr = "10.210.0.1/24"
	DefaultPeerAddr = "10.210.0.2/24"
	DefaultPinPath  = "/sys/fs/bpf/kube-efvi-e2e/fabric-pass"
)

// DefaultRoutes is the e2e cluster's pod network.
var DefaultRoutes = []string{"10.244.0.0/16"}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.NS, DefaultNS)
	def(&c.Port, DefaultPort)
	def(&c.Peer, DefaultPeer)
	def(&c.PortAddr, DefaultPortAddr)
	def(&c.PeerAddr, DefaultPeerAddr)
	def(&c.PinPath, DefaultPinPath)
	if c.Routes == nil {
		c.Routes = DefaultRoutes
	}
	return c
}

// Up (re)creates the fabric: it removes a previous one first.
func Up(c Config) error {
	c = c.WithDefaults()
	portAddr, err := netlink.ParseAddr(c.PortAddr)
	if err != nil {
		return fmt.Errorf("port address %q: %w", c.PortAddr, err)
	}
	peerAddr, err := netlink.ParseAddr(c.PeerAddr)
	if err != nil {
		return fmt.Errorf("fabric address %q: %w", c.PeerAddr, err)
	}
	if err := Down(c); err != nil {
		return fmt.Errorf("remove the previous fabric: %w", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	root, err := netns.Get()
	if err != nil {
		return fmt.Errorf("current netns: %w", err)
	}
	defer root.Close()
	ns, err := netns.NewNamed(c.NS) // also switches this thread into it
	if err != nil {
		return fmt.Errorf("create netns %s: %w", c.NS, err)
	}
	defer ns.Close()
	if err := netns.Set(root); err != nil {
		return fmt.Errorf("back to the root netns: %w", err)
	}
	va := netlink.NewLinkAttrs()
	va.Name = c.Port
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: va, PeerName: c.Peer, PeerNamespace: netlink.NsFd(ns)}); err != nil {
		return fmt.Errorf("create veth %s<->%s: %w", c.Port, c.Peer, err)
	}
	port, err := netlink.LinkByName(c.Port)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(port, portAddr); err != nil {
		return fmt.Errorf("address %s on %s: %w", c.PortAddr, c.Port, err)
	}
	if err := netlink.LinkSetUp(port); err != nil {
		return fmt.Errorf("up %s: %w", c.Port, err)
	}
	// The far end: addresses, up, XDP_PASS pinned.
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter netns %s: %w", c.NS, err)
	}
	err = func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err == nil {
			err = h.LinkSetUp(lo)
		}
		if err != nil {
			return fmt.Errorf("loopback in %s: %w", c.NS, err)
		}
		peer, err := h.LinkByName(c.Peer)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(peer, peerAddr); err != nil {
			return fmt.Errorf("address %s on %s: %w", c.PeerAddr, c.Peer, err)
		}
		if err := h.LinkSetUp(peer); err != nil {
			return err
		}
		for _, r := range c.Routes {
			_, dst, err := net.ParseCIDR(r)
			if err != nil {
				return fmt.Errorf("fabric route %q: %w", r, err)
			}
			if err := h.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: dst, Gw: portAddr.IP}); err != nil {
				return fmt.Errorf("route %s via %s in %s: %w", r, portAddr.IP, c.NS, err)
			}
		}
		l, err := dataplane.AttachPassXDP(peer.Attrs().Index)
		if err != nil {
			return err
		}
		defer l.Close() // the pin keeps the link
		pinner, ok := l.(interface{ Pin(string) error })
		if !ok {
			return errors.New("the XDP_PASS link cannot be pinned")
		}
		if err := os.MkdirAll(filepath.Dir(c.PinPath), 0o700); err != nil {
			return err
		}
		if err := pinner.Pin(c.PinPath); err != nil {
			return fmt.Errorf("pin the fabric's XDP link at %s: %w", c.PinPath, err)
		}
		return nil
	}()
	if serr := netns.Set(root); serr != nil && err == nil {
		err = serr
	}
	return err
}

// Down removes the fabric (deleting the namespace deletes the veth pair).
func Down(c Config) error {
	c = c.WithDefaults()
	var errs []error
	if err := os.Remove(c.PinPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// The pin's directory is the fabric's too (Up made it); it goes when
	// empty, and stays when something else is pinned there.
	_ = os.Remove(filepath.Dir(c.PinPath))
	if l, err := netlink.LinkByName(c.Port); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", c.Port, err))
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", c.NS)); err == nil {
		if err := netns.DeleteNamed(c.NS); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", c.NS, err))
		}
	}
	return errors.Join(errs...)
}

// Status describes the fabric, or an error naming what is missing.
func Status(c Config) (string, error) {
	c = c.WithDefaults()
	port, err := netlink.LinkByName(c.Port)
	if err != nil {
		return "", fmt.Errorf("port %s missing (run `go run ./e2e/cmd/fabric up`): %w", c.Port, err)
	}
	if _, err := os.Stat(c.PinPath); err != nil {
		return "", fmt.Errorf("fabric XDP_PASS pin %s missing: %w", c.PinPath, err)
	}
	addrs, _ := netlink.AddrList(port, netlink.FAMILY_V4)
	var ips []net.IP
	for _, a := range addrs {
		ips = append(ips, a.IP)
	}
	return fmt.Sprintf("%s (ifindex %d, %v, mac %s) <-> %s in netns %s (%s, routes %v via the port); XDP_PASS pinned at %s",
		c.Port, port.Attrs().Index, ips, port.Attrs().HardwareAddr, c.Peer, c.NS, c.PeerAddr, c.Routes, c.PinPath), nil
}
