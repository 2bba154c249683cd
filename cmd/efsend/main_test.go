package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/internal/efvitool/agenttest"
	"github.com/kube-efvi/kube-efvi/internal/latency"
	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"golang.org/x/sys/unix"
)

// TestSendToFabric runs efsend on a VI served by the agent's software
// backend and checks that its datagrams arrive at kernel UDP sockets in the
// fabric namespace (the wire): unicast, then multicast to a group the
// socket joined, with the right size, count and sequence numbers.
func TestSendToFabric(t *testing.T) {
	testnet.RequireRoot(t)
	topo := bench.NewTopology(t)
	ag := agenttest.Start(t, topo, "efsend")
	t.Setenv("EFVI_SOCKET", ag.Socket)
	wireMAC := fmt.Sprintf("%x", topo.Wire.MAC)
	wireMAC = strings.Join([]string{wireMAC[0:2], wireMAC[2:4], wireMAC[4:6], wireMAC[6:8], wireMAC[8:10], wireMAC[10:12]}, ":")

	for _, c := range []struct {
		name  string
		dst   netip.Addr
		args  []string
		count int
		size  int
	}{
		{"unicast", topo.FabricIP, []string{"-dst-mac", wireMAC, "-rate", "20000"}, 300, 200},
		{"multicast", netip.MustParseAddr("239.1.2.3"), []string{"-batch", "8"}, 100, 1472},
	} {
		t.Run(c.name, func(t *testing.T) {
			var fd int
			if err := topo.Fabric.Do(func() (err error) {
				if fd, err = latency.UDPSocket(netip.AddrPortFrom(netip.IPv4Unspecified(), 7300), true); err != nil {
					return err
				}
				if c.dst.IsMulticast() {
					mreq := &unix.IPMreqn{Multiaddr: c.dst.As4(), Ifindex: int32(topo.Wire.Index)}
					return unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, mreq)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			args := append([]string{"-dst", netip.AddrPortFrom(c.dst, 7300).String(), "-count", fmt.Sprint(c.count), "-size", fmt.Sprint(c.size)}, c.args...)
			tot, err := run(context.Background(), args, &out, io.Discard)
			if err != nil {
				t.Fatalf("efsend %v: %v\n%s", args, err, out.String())
			}
			if tot.Sent != uint64(c.count) || tot.Completed != uint64(c.count) || tot.TxErrors != 0 {
				t.Fatalf("efsend totals %+v, want %d sent and completed\n%s", tot, c.count, out.String())
			}
			seen := make(map[uint64]bool)
			buf := make([]byte, 2048)
			for idle := 0; len(seen) < c.count && idle < 20; { // 100 ms receive timeout: 2 s of silence ends it
				n, _, err := unix.Recvfrom(fd, buf, 0)
				if errors.Is(err, unix.EAGAIN) {
					idle++
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if n != c.size {
					t.Fatalf("datagram of %d bytes, want %d", n, c.size)
				}
				seq := binary.BigEndian.Uint64(buf)
				if seq >= uint64(c.count) || seen[seq] {
					t.Fatalf("sequence %d out of range or repeated", seq)
				}
				for j := 8; j < n; j++ { // the pattern after the sequence number
					if buf[j] != byte(j) {
						t.Fatalf("datagram %d: payload byte %d is %#x, want %#x", seq, j, buf[j], byte(j))
					}
				}
				seen[seq] = true
			}
			if len(seen) != c.count {
				t.Fatalf("the fabric's socket got %d of %d datagrams\n%s", len(seen), c.count, out.String())
			}
			if !strings.Contains(out.String(), fmt.Sprintf("sent %d, completed %d, tx errors 0", c.count, c.count)) {
				t.Errorf("report:\n%s", out.String())
			}
		})
	}
}

func TestSendArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "-dst"},
		{[]string{"-dst", "10.0.0.1"}, "IP:PORT"},
		{[]string{"-dst", "10.0.0.1:0", "-dst-mac", "02:00:00:00:00:01"}, "port 0"},
		{[]string{"-dst", "10.0.0.1:5000"}, "-dst-mac"},
		{[]string{"-dst", "10.0.0.1:5000", "-dst-mac", "zz"}, "-dst-mac"},
		{[]string{"-dst", "239.1.1.1:5000", "-size", "4"}, "-size"},
		{[]string{"-dst", "239.1.1.1:5000", "-size", "1473"}, "-size"},
		{[]string{"-dst", "239.1.1.1:5000", "-rate", "-1"}, "-rate"},
		{[]string{"-dst", "239.1.1.1:5000", "-batch", "65"}, "-batch"},
		{[]string{"-dst", "239.1.1.1:5000", "-src-port", "70000"}, "-src-port"},
		{[]string{"-dst", "239.1.1.1:5000", "extra"}, "unexpected"},
	} {
		_, err := parseArgs(c.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one mentioning %q", c.args, err, c.want)
		}
	}
	if _, err := parseArgs([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	o, err := parseArgs([]string{"-dst", "239.1.130.4:5000"}, io.Discard)
	if err != nil || o.dstMAC != [6]byte{0x01, 0x00, 0x5e, 0x01, 0x82, 0x04} || o.srcPort != 5000 {
		t.Errorf("multicast: %+v %v", o, err)
	}
	if o, err := parseArgs([]string{"-dst", "10.0.0.1:5000", "-dst-mac", "02:00:00:00:00:09", "-c", "3"}, io.Discard); err != nil || o.count != 3 || o.dstMAC[5] != 9 {
		t.Errorf("unicast: %+v %v", o, err)
	}
}
