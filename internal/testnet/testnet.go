// Package testnet builds throw-away network topologies for privileged tests:
// named network namespaces and veth pairs with unique names that are removed
// when the test ends, even when it fails or panics.
//
// Every name this package makes starts with [Prefix], so [Sweep] can remove
// what a killed test process left behind. Tests that need root call
// [RequireRoot] first; without root they are skipped with a message that says
// so, never passed silently.
package testnet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Prefix starts every namespace and interface name made by this package.
const Prefix = "efvt"

// EnvRequirePrivileged, set to 1 (CI sets it), turns RequireRoot's skip
// into a failure: a run that claims to test the kernel must not skip it.
const EnvRequirePrivileged = "EFVI_REQUIRE_PRIVILEGED"

// RequireRoot skips the test unless the process runs as root with
// CAP_NET_ADMIN, saying why; with EFVI_REQUIRE_PRIVILEGED=1 it fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		msg := fmt.Sprintf("privileged test %s: needs root (network namespaces, veth, XDP); run `sudo make test` or CI", t.Name())
		if os.Getenv(EnvRequirePrivileged) == "1" {
			t.Fatalf("FAIL %s, and %s=1 forbids skipping it", msg, EnvRequirePrivileged)
		}
		t.Skip("SKIP " + msg)
	}
}

// UniqueName returns prefix+random hex, at most 15 bytes (IFNAMSIZ-1).
func UniqueName(kind string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	n := Prefix + kind + hex.EncodeToString(b[:])
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// NS is a named network namespace (visible in /run/netns, so `ip netns exec`
// works on it) owned by one test.
type NS struct {
	Name   string
	handle netns.NsHandle
}

// NewNS creates a named network namespace with loopback up, and removes it
// when the test ends.
func NewNS(t testing.TB) *NS {
	t.Helper()
	ns, err := CreateNS(UniqueName("n"))
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("delete netns %s: %v", ns.Name, err)
		}
	})
	return ns
}

// CreateNS creates the named namespace without binding its life to a test;
// the caller must Delete it.
func CreateNS(name string) (*NS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return nil, fmt.Errorf("new netns %s: %w", name, err)
	}
	// NewNamed switched this thread into the new namespace.
	lo, lerr := netlink.LinkByName("lo")
	if lerr == nil {
		lerr = netlink.LinkSetUp(lo)
	}
	if err := netns.Set(orig); err != nil {
		// This thread is stuck in the wrong namespace: never unlock it, so
		// the runtime retires the thread when the goroutine exits.
		runtime.LockOSThread()
		return nil, fmt.Errorf("return to original netns: %w", err)
	}
	ns := &NS{Name: name, handle: h}
	if lerr != nil {
		_ = ns.Delete()
		return nil, fmt.Errorf("bring up lo in %s: %w", name, lerr)
	}
	return ns, nil
}

// Handle is the namespace's fd handle (owned by NS: do not close it).
func (ns *NS) Handle() netns.NsHandle { return ns.handle }

// Path is the bind-mount path of the namespace.
func (ns *NS) Path() string { return "/run/netns/" + ns.Name }

// Delete removes the namespace. Links inside it go with it.
func (ns *NS) Delete() error {
	var errs []error
	if ns.handle.IsOpen() {
		errs = append(errs, ns.handle.Close())
	}
	if err := netns.DeleteNamed(ns.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Do runs fn on a locked OS thread inside the namespace and returns to the
// original namespace afterwards.
func (ns *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns.handle); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns.Name, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // retire the thread, see CreateNS
		return errors.Join(ferr, fmt.Errorf("leave netns %s: %w", ns.Name, err))
	}
	return ferr
}

// Netlink returns a netlink handle bound to the namespace. The caller closes it.
func (ns *NS) Netlink() (*netlink.Handle, error) {
	return netlink.NewHandleAt(ns.handle)
}

// Veth describes one end of a veth pair.
type Veth struct {
	Name  string
	NS    *NS // nil = the test's own (root) namespace
	Index int
	MAC   []byte
}

// handleFor returns a netlink handle for ns (nil = the current namespace).
func handleFor(ns *NS) (*netlink.Handle, error) {
	if ns == nil {
		return netlink.NewHandle()
	}
	return ns.Netlink()
}

// VethPair creates a veth pair, moves each end into its namespace (nil = stay
// in the current one), brings both up, and deletes it when the test ends.
// Names are chosen uniquely.
func VethPair(t testing.TB, nsA, nsB *NS) (a, b Veth) {
	t.Helper()
	a, b, err := CreateVethPair(UniqueName("a"), nsA, UniqueName("b"), nsB)
	if err != nil {
		t.Fatalf("veth pair: %v", err)
	}
	t.Cleanup(func() {
		if err := DeleteLink(a); err != nil {
			t.Errorf("delete veth %s: %v", a.Name, err)
		}
	})
	return a, b
}

// CreateVethPair is VethPair without the test binding; deleting either end
// deletes both.
func CreateVethPair(nameA string, nsA *NS, nameB string, nsB *NS) (a, b Veth, err error) {
	la := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA, MTU: 1500}, PeerName: nameB}
	if err := netlink.LinkAdd(la); err != nil {
		return a, b, fmt.Errorf("add veth %s/%s: %w", nameA, nameB, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = netlink.LinkDel(la)
		}
	}()
	for _, end := range []struct {
		name string
		ns   *NS
		out  *Veth
	}{{nameA, nsA, &a}, {nameB, nsB, &b}} {
		if err := setupEnd(end.name, end.ns, end.out); err != nil {
			return a, b, err
		}
	}
	// Frames sent before the carrier is up are dropped without a trace, so
	// hand out the pair only once both ends report it.
	for _, v := range []Veth{a, b} {
		if err := waitOperUp(v); err != nil {
			return a, b, err
		}
	}
	ok = true
	return a, b, nil
}

// waitOperUp polls (bounded) until the link's operational state is up.
func waitOperUp(v Veth) error {
	h, err := handleFor(v.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := h.LinkByName(v.Name)
		if err != nil {
			return fmt.Errorf("find %s: %w", v.Name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: carrier still %s after 5s", v.Name, l.Attrs().OperState)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func setupEnd(name string, ns *NS, out *Veth) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if ns != nil {
		if err := netlink.LinkSetNsFd(l, int(ns.handle)); err != nil {
			return fmt.Errorf("move %s to %s: %w", name, ns.Name, err)
		}
	}
	h, err := handleFor(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if l, err = h.LinkByName(name); err != nil {
		return fmt.Errorf("find %s after move: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", name, err)
	}
	*out = Veth{Name: name, NS: ns, Index: l.Attrs().Index, MAC: append([]byte(nil), l.Attrs().HardwareAddr...)}
	return nil
}

// DeleteLink deletes a link wherever it lives; a link already gone (e.g. its
// namespace was deleted) is not an error.
func DeleteLink(v Veth) error {
	if v.NS != nil {
		if _, err := os.Stat(v.NS.Path()); err != nil {
			return nil // namespace gone, and the link with it
		}
	}
	h, err := handleFor(v.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(v.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return h.LinkDel(l)
}

// AddAddr assigns a CIDR address (e.g. "10.99.0.1/24") to the link.
func (v Veth) AddAddr(cidr string) error {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("parse %q: %w", cidr, err)
	}
	// Plain IPv6 DAD would keep the address tentative for a second.
	if addr.IP.To4() == nil {
		addr.Flags |= unix.IFA_F_NODAD
	}
	h, err := handleFor(v.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(v.Name)
	if err != nil {
		return fmt.Errorf("find %s: %w", v.Name, err)
	}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", cidr, v.Name, err)
	}
	return nil
}

// Sweep removes namespaces and root-namespace links left by earlier test
// processes that were killed before their cleanups ran. It returns the names
// it removed. Run it only when no test is running (e.g. before `go test`).
func Sweep() ([]string, error) { return SweepPrefix(Prefix) }

// removeNamedNS removes /run/netns/<name> whether or not it is still a
// mount point (a killed process can leave a plain file behind).
func removeNamedNS(name string) error {
	p := filepath.Join("/run/netns", name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// SweepPrefix is Sweep limited to names that start with prefix.
func SweepPrefix(prefix string) ([]string, error) {
	var removed []string
	var errs []error
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := removeNamedNS(e.Name()); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, "netns/"+e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			if err := netlink.LinkDel(l); err != nil {
				var nf netlink.LinkNotFoundError
				if !errors.As(err, &nf) {
					errs = append(errs, err)
				}
				continue
			}
			removed = append(removed, "link/"+l.Attrs().Name)
		}
	}
	return removed, errors.Join(errs...)
}
