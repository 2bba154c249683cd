package fabric

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
)

// Multi is the fabric of a several-node cluster whose nodes have their own
// network namespaces (kind's node containers): one fabric namespace on the
// host holds a bridge; each node gets a port (a veth, Port in the node's
// namespace) whose far end (fab<i>) is a port of that bridge. The bridge
// carries the fabric's own address (BridgeAddr), where tests send from, and
// routes each node's pod CIDR via that node's port address, so traffic to a
// pod enters its node on the port, where the data plane steers it.
//
// As in Config, each far end carries a pinned XDP_PASS program (a veth drops
// frames another device XDP-redirects into it unless its peer has one).
type Multi struct {
	NS         string // fabric namespace on the host
	Bridge     string // bridge device in NS
	BridgeAddr string // CIDR on the bridge
	Port       string // port name in every node's namespace
	PinDir     string // bpffs directory for the far ends' XDP links
	Nodes      []Node
}

// Node is one node's side of a Multi fabric.
type Node struct {
	Name    string // for messages
	PID     int    // a process in the node's network namespace, or:
	NSPath  string // the namespace's path (/run/netns/X, /proc/PID/ns/net)
	Addr    string // CIDR on the node's port
	PodCIDR string // routed from the fabric via Addr; empty: none
}

// Defaults of Multi.
const (
	DefaultMultiNS     = "efvi-kind-fabric"
	DefaultMultiBridge = "fabric-br"
	DefaultMultiPinDir = "/sys/fs/bpf/kube-efvi-kind"
)

func (m Multi) withDefaults() Multi {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&m.NS, DefaultMultiNS)
	def(&m.Bridge, DefaultMultiBridge)
	def(&m.BridgeAddr, DefaultPeerAddr)
	def(&m.Port, DefaultPort)
	def(&m.PinDir, DefaultMultiPinDir)
	return m
}

// FarEnd is the name of node i's far end in the fabric namespace.
func FarEnd(i int) string { return "fab" + strconv.Itoa(i) }

// UpMulti (re)creates the fabric: it removes a previous one first.
func UpMulti(m Multi) error {
	m = m.withDefaults()
	bridgeAddr, err := netlink.ParseAddr(m.BridgeAddr)
	if err != nil {
		return fmt.Errorf("bridge address %q: %w", m.BridgeAddr, err)
	}
	if err := DownMulti(m); err != nil {
		return fmt.Errorf("remove the previous fabric: %w", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	root, err := netns.Get()
	if err != nil {
		return fmt.Errorf("current netns: %w", err)
	}
	defer root.Close()
	fab, err := netns.NewNamed(m.NS) // also switches this thread into it
	if err != nil {
		return fmt.Errorf("create netns %s: %w", m.NS, err)
	}
	defer fab.Close()
	// Every step below runs in the fabric namespace (AttachPassXDP uses the
	// calling thread's); node ends are reached through handles.
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
			return fmt.Errorf("loopback in %s: %w", m.NS, err)
		}
		ba := netlink.NewLinkAttrs()
		ba.Name = m.Bridge
		br := &netlink.Bridge{LinkAttrs: ba}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("bridge %s in %s: %w", m.Bridge, m.NS, err)
		}
		if err := h.AddrAdd(br, bridgeAddr); err != nil {
			return fmt.Errorf("address %s on %s: %w", m.BridgeAddr, m.Bridge, err)
		}
		if err := h.LinkSetUp(br); err != nil {
			return err
		}
		if err := os.MkdirAll(m.PinDir, 0o700); err != nil {
			return err
		}
		for i, n := range m.Nodes {
			if err := m.addNode(h, br, i, n); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
		return nil
	}()
	if serr := netns.Set(root); serr != nil && err == nil {
		err = serr
	}
	return err
}

func (m Multi) addNode(h *netlink.Handle, br *netlink.Bridge, i int, n Node) error {
	addr, err := netlink.ParseAddr(n.Addr)
	if err != nil {
		return fmt.Errorf("port address %q: %w", n.Addr, err)
	}
	var nodeNS netns.NsHandle
	if n.NSPath != "" {
		nodeNS, err = netns.GetFromPath(n.NSPath)
	} else {
		nodeNS, err = netns.GetFromPid(n.PID)
	}
	if err != nil {
		return fmt.Errorf("netns of the node (pid %d, path %q): %w", n.PID, n.NSPath, err)
	}
	defer nodeNS.Close()
	nh, err := netlink.NewHandleAt(nodeNS)
	if err != nil {
		return err
	}
	defer nh.Close()
	// A port left by an earlier fabric whose namespace is still being torn
	// down (the kernel does that asynchronously) would block the new one.
	if old, err := nh.LinkByName(m.Port); err == nil {
		if err := nh.LinkDel(old); err != nil {
			return fmt.Errorf("remove the node's old %s: %w", m.Port, err)
		}
	}
	va := netlink.NewLinkAttrs()
	va.Name = FarEnd(i)
	va.MasterIndex = br.Attrs().Index
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: va, PeerName: m.Port, PeerNamespace: netlink.NsFd(nodeNS)}); err != nil {
		return fmt.Errorf("create veth %s (in %s) <-> %s (in the node): %w", va.Name, m.NS, m.Port, err)
	}
	far, err := h.LinkByName(va.Name)
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(far); err != nil {
		return err
	}
	port, err := nh.LinkByName(m.Port)
	if err != nil {
		return err
	}
	if err := nh.AddrAdd(port, addr); err != nil {
		return fmt.Errorf("address %s on the node's %s: %w", n.Addr, m.Port, err)
	}
	if err := nh.LinkSetUp(port); err != nil {
		return err
	}
	if n.PodCIDR != "" {
		_, dst, err := net.ParseCIDR(n.PodCIDR)
		if err != nil {
			return fmt.Errorf("pod CIDR %q: %w", n.PodCIDR, err)
		}
		if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: addr.IP}); err != nil {
			return fmt.Errorf("route %s via %s in %s: %w", n.PodCIDR, addr.IP, m.NS, err)
		}
	}
	l, err := dataplane.AttachPassXDP(far.Attrs().Index)
	if err != nil {
		return err
	}
	defer l.Close() // the pin keeps the link
	pinner, ok := l.(interface{ Pin(string) error })
	if !ok {
		return errors.New("the XDP_PASS link cannot be pinned")
	}
	pin := filepath.Join(m.PinDir, va.Name)
	if err := pinner.Pin(pin); err != nil {
		return fmt.Errorf("pin the XDP link of %s at %s: %w", va.Name, pin, err)
	}
	return nil
}

// DownMulti removes the fabric: the pins and the namespace (deleting it
// deletes the bridge and every veth pair, node ends included).
func DownMulti(m Multi) error {
	m = m.withDefaults()
	var errs []error
	if err := os.RemoveAll(m.PinDir); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", m.NS)); err == nil {
		if err := netns.DeleteNamed(m.NS); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", m.NS, err))
		}
	}
	return errors.Join(errs...)
}
