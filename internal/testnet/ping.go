package testnet

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// PingFrom sends one ICMPv4 echo request to dst from inside the named
// network namespace and waits up to timeout for the reply, so that tests
// need no ping binary on the host. The raw socket is opened inside the
// namespace and used from there.
func PingFrom(nsName string, dst netip.Addr, timeout time.Duration) error {
	if !dst.Is4() {
		return fmt.Errorf("ping %s: only IPv4 is supported", dst)
	}
	target, err := netns.GetFromName(nsName)
	if err != nil {
		return fmt.Errorf("ping %s from netns %s: %w", dst, nsName, err)
	}
	defer target.Close()
	conn, err := listenICMPIn(target)
	if err != nil {
		return fmt.Errorf("ping %s from netns %s: %w", dst, nsName, err)
	}
	defer conn.Close()
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("kube-efvi test")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("ping %s from netns %s: send: %w", dst, nsName, err)
	}
	deadline := time.Now().Add(timeout)
	if err := conn.SetReadDeadline(deadline); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("ping %s from netns %s: no reply within %v: %w", dst, nsName, timeout, err)
		}
		reply, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || reply.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := reply.Body.(*icmp.Echo); ok && e.ID == id && from.String() == dst.String() {
			return nil
		}
	}
}

// listenICMPIn opens a raw ICMPv4 socket in the namespace h.
func listenICMPIn(h netns.NsHandle) (*icmp.PacketConn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(h); err != nil {
		return nil, fmt.Errorf("enter netns: %w", err)
	}
	conn, lerr := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err := netns.Set(orig); err != nil {
		runtime.LockOSThread() // retire the thread: it is in the wrong namespace
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("leave netns: %w", err)
	}
	return conn, lerr
}
