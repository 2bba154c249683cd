package testnet

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func TestUniqueName(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		n := UniqueName("x")
		if len(n) > 15 || !strings.HasPrefix(n, Prefix) {
			t.Fatalf("bad name %q", n)
		}
		if seen[n] {
			t.Fatalf("duplicate name %q", n)
		}
		seen[n] = true
	}
}

// TestVethAcrossNamespaces sends a real UDP datagram between two namespaces
// joined by a veth pair, then checks that cleanup removed everything.
func TestVethAcrossNamespaces(t *testing.T) {
	RequireRoot(t)
	var nsA, nsB *NS
	t.Run("topology", func(t *testing.T) {
		nsA, nsB = NewNS(t), NewNS(t)
		a, b := VethPair(t, nsA, nsB)
		if err := a.AddAddr("10.199.0.1/24"); err != nil {
			t.Fatal(err)
		}
		if err := b.AddAddr("10.199.0.2/24"); err != nil {
			t.Fatal(err)
		}
		var conn *net.UDPConn
		if err := nsB.Do(func() (err error) {
			conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 199, 0, 2), Port: 9999})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := nsA.Do(func() error {
			c, err := net.Dial("udp4", "10.199.0.2:9999")
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("hello"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _, err := conn.ReadFromUDP(buf)
		if err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("read = %q, %v; want hello", buf[:n], err)
		}
		// The root namespace must not see either end.
		if _, err := netlink.LinkByName(a.Name); err == nil {
			t.Fatalf("%s visible in root namespace", a.Name)
		}
	})
	for _, ns := range []*NS{nsA, nsB} {
		if _, err := os.Stat(ns.Path()); !os.IsNotExist(err) {
			t.Errorf("namespace %s not removed by cleanup (stat err %v)", ns.Name, err)
		}
	}
}

// TestCleanupAfterPanic runs a child test process that builds a topology and
// panics, then checks that the child's cleanups removed it.
func TestCleanupAfterPanic(t *testing.T) {
	RequireRoot(t)
	if os.Getenv("TESTNET_PANIC_CHILD") == "1" {
		ns := NewNS(t)
		a, _ := VethPair(t, nil, ns)
		fmt.Printf("NAMES %s %s\n", ns.Name, a.Name)
		panic("deliberate panic to test cleanup")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCleanupAfterPanic$", "-test.v")
	cmd.Env = append(os.Environ(), "TESTNET_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("child test did not fail:\n%s", out)
	}
	var nsName, link string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "NAMES" {
			nsName, link = f[1], f[2]
		}
	}
	if nsName == "" || !strings.Contains(string(out), "deliberate panic") {
		t.Fatalf("child did not build its topology and panic:\n%s", out)
	}
	if _, err := os.Stat("/run/netns/" + nsName); !os.IsNotExist(err) {
		t.Errorf("namespace %s survived a panicking test", nsName)
	}
	if _, err := netlink.LinkByName(link); err == nil {
		t.Errorf("veth %s survived a panicking test", link)
	}
}

func TestSweep(t *testing.T) {
	RequireRoot(t)
	// Sweep only this test's own kind of name: other packages' tests run in
	// parallel and their namespaces must survive.
	prefix := Prefix + "z"
	ns, err := CreateNS(UniqueName("z"))
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := CreateVethPair(UniqueName("z"), nil, UniqueName("b"), ns)
	if err != nil {
		_ = ns.Delete()
		t.Fatal(err)
	}
	removed, err := SweepPrefix(prefix)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	joined := strings.Join(removed, " ")
	if !strings.Contains(joined, ns.Name) || !strings.Contains(joined, a.Name) {
		t.Fatalf("sweep removed %v; want %s and %s", removed, ns.Name, a.Name)
	}
	if _, err := os.Stat(ns.Path()); !os.IsNotExist(err) {
		t.Errorf("namespace %s still there after sweep", ns.Name)
	}
}
