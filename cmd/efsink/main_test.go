package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/internal/efvitool/agenttest"
	"github.com/kube-efvi/kube-efvi/internal/latency"
	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"golang.org/x/sys/unix"
)

// TestSinkReceivesFromFabric runs efsink on a VI served by the agent's
// software backend with two filters, sends datagrams to both from a kernel
// UDP socket in the fabric namespace (the wire), and checks efsink counts
// exactly what was sent, per filter.
func TestSinkReceivesFromFabric(t *testing.T) {
	testnet.RequireRoot(t)
	topo := bench.NewTopology(t)
	ag := agenttest.Start(t, topo, "efsink")
	t.Setenv("EFVI_SOCKET", ag.Socket)

	const n1, n2 = 150, 50
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	type result struct {
		t   *Totals
		err error
	}
	done := make(chan result, 1)
	go func() {
		tot, err := run(ctx, []string{"-c", fmt.Sprint(n1 + n2), "-hexdump", "48", "udp:7100", "udp:" + topo.PortIP.String() + ":7101"}, &out, io.Discard)
		done <- result{tot, err}
	}()
	for deadline := time.Now().Add(10 * time.Second); len(ag.Alloc.Port.Filters()) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("efsink never installed its filters")
		}
	}
	payload := bytes.Repeat([]byte{0xab}, 100)
	if err := topo.Fabric.Do(func() error {
		fd, err := latency.UDPSocket(netip.AddrPortFrom(topo.FabricIP, 9100), true)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		send := func(port, count int) error {
			to := &unix.SockaddrInet4{Port: port, Addr: topo.PortIP.As4()}
			for i := 0; i < count; i++ {
				if err := unix.Sendto(fd, payload, 0, to); err != nil {
					return fmt.Errorf("send %d to %d: %w", i, port, err)
				}
				if i%32 == 31 { // stay under the rings' depth whatever the scheduler does
					time.Sleep(time.Millisecond)
				}
			}
			return nil
		}
		if err := send(7100, n1); err != nil {
			return err
		}
		return send(7101, n2)
	}); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		cancel()
		r = <-done
	}
	if r.err != nil {
		t.Fatalf("efsink: %v\n%s", r.err, out.String())
	}
	if r.t.Frames != n1+n2 || r.t.PerSpec[0] != n1 || r.t.PerSpec[1] != n2 || r.t.Other != 0 {
		t.Fatalf("efsink counted %d frames (per filter %v, other %d), want %d (%d + %d)\n%s", r.t.Frames, r.t.PerSpec, r.t.Other, n1+n2, n1, n2, out.String())
	}
	// 14 + 20 + 8 + 100 bytes per frame.
	if r.t.Bytes != uint64(n1+n2)*142 {
		t.Errorf("bytes %d, want %d", r.t.Bytes, (n1+n2)*142)
	}
	s := out.String()
	for _, want := range []string{fmt.Sprintf("efsink: %d frames", n1+n2), fmt.Sprintf("udp:%s:7100", topo.PortIP), fmt.Sprintf(" %d\n", n1), "frame 1 len 142", "  0020 "} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "frame ") != n1+n2 {
		t.Errorf("%d hex dumps, want %d", strings.Count(s, "frame "), n1+n2)
	}
}

// TestSinkWaitMode: blocking mode (VI.Wait) receives too, with rate lines.
func TestSinkWaitMode(t *testing.T) {
	testnet.RequireRoot(t)
	topo := bench.NewTopology(t)
	ag := agenttest.Start(t, topo, "efsinkw")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 20
	var out lockedBuffer
	done := make(chan error, 1)
	var tot *Totals
	go func() {
		var err error
		tot, err = run(ctx, []string{"-socket", ag.Socket, "-wait", "-interval", "1ms", "-c", fmt.Sprint(n), "udp:7200"}, &out, io.Discard)
		done <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); len(ag.Alloc.Port.Filters()) < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("efsink never installed its filter")
		}
	}
	// While idle in Wait, -interval still reports (a zero rate).
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "pkts/s"); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no rate line with -interval while waiting:\n%s", out.String())
		}
	}
	if err := topo.Fabric.Do(func() error {
		fd, err := latency.UDPSocket(netip.AddrPortFrom(topo.FabricIP, 9200), true)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for i := 0; i < n; i++ {
			if err := unix.Sendto(fd, []byte("hello"), 0, &unix.SockaddrInet4{Port: 7200, Addr: topo.PortIP.As4()}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-done: // -c n: the sink stops by itself
	case <-time.After(30 * time.Second):
		cancel()
		err = <-done
	}
	if err != nil {
		t.Fatalf("efsink -wait: %v", err)
	}
	if tot.Frames != n {
		t.Fatalf("efsink -wait counted %d frames, want %d\n%s", tot.Frames, n, out.String())
	}
	if !strings.Contains(out.String(), "efsink: 20 frames") {
		t.Errorf("totals missing:\n%s", out.String())
	}
}

func TestSinkArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "no filter spec"},
		{[]string{"-hexdump", "-1", "udp:1"}, "-hexdump"},
		{[]string{"-interval", "-1s", "udp:1"}, "-interval"},
		{[]string{"-bufs", "1", "udp:1"}, "-bufs"},
		{[]string{"-nope"}, "not defined"},
	} {
		_, _, err := parseArgs(c.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one mentioning %q", c.args, err, c.want)
		}
	}
	if _, _, err := parseArgs([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	o, specs, err := parseArgs([]string{"-c", "5", "-wait", "udp:1", "eth:02:00:00:00:00:01"}, io.Discard)
	if err != nil || o.count != 5 || !o.wait || len(specs) != 2 {
		t.Errorf("parse: %+v %v %v", o, specs, err)
	}
	// Without an agent socket the error says how to give one.
	t.Setenv("EFVI_SOCKET", "")
	if _, err := run(context.Background(), []string{"udp:1"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "-socket") {
		t.Errorf("no socket: %v", err)
	}
}

// TestAppendUint: the receive loop's number formatting.
func TestAppendUint(t *testing.T) {
	for _, v := range []uint64{0, 7, 10, 12345, 1<<64 - 1} {
		if got := string(appendUint(nil, v)); got != fmt.Sprint(v) {
			t.Errorf("appendUint(%d) = %q", v, got)
		}
	}
	buf := make([]byte, 0, 64)
	if a := testing.AllocsPerRun(100, func() { buf = appendUint(buf[:0], 1234567) }); a != 0 {
		t.Errorf("appendUint allocates %v", a)
	}
}

// lockedBuffer is a bytes.Buffer the sink writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
