package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/introspect"
	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

func TestParseArgs(t *testing.T) {
	o, pos, err := parseArgs([]string{"stats", "team/trader", "-o", "json", "-socket", "/x.sock"}, &bytes.Buffer{})
	if err != nil || o.output != "json" || o.socket != "/x.sock" || strings.Join(pos, " ") != "stats team/trader" {
		t.Fatalf("parse: %+v %q %v", o, pos, err)
	}
	for _, bad := range [][]string{{"-o", "yaml", "ports"}, {"-interval", "0s", "watch"}, {"-s", "70000", "capture", "x"}, {"-bogus"}} {
		if _, _, err := parseArgs(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("parseArgs(%q) accepted", bad)
		}
	}
	var stderr bytes.Buffer
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{nil, 2, "no command"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"ports", "extra"}, 2, "unexpected arguments"},
		{[]string{"stats", "a", "b"}, 2, "unexpected arguments"},
		{[]string{"-socket", "/nonexistent/efvictl.sock", "ports"}, 1, "is efvi-agent running"},
		{[]string{"-socket", "/nonexistent/efvictl.sock", "capture", "pod"}, 1, "-w is required"},
		{[]string{"-socket", "/nonexistent/efvictl.sock", "capture", "-w", "x.pcap"}, 1, "which VI"},
	} {
		stderr.Reset()
		if code := run(context.Background(), c.args, &bytes.Buffer{}, &stderr); code != c.code || !strings.Contains(stderr.String(), c.says) {
			t.Errorf("run %q = %d, %q; want %d mentioning %q", c.args, code, stderr.String(), c.code, c.says)
		}
	}
}

func TestWithRates(t *testing.T) {
	prev := []api.VIStats{{Device: "p-vi0", RxPackets: 100, RxBytes: 1000, TxPackets: 10, Socket: &api.SocketStats{RxNoDescDrops: 5}}}
	cur := []api.VIStats{
		{Device: "p-vi0", RxPackets: 300, RxBytes: 251000, TxPackets: 4, Socket: &api.SocketStats{RxNoDescDrops: 9}},
		{Device: "p-vi1", RxPackets: 7},
	}
	rs := withRates(prev, cur, 2*time.Second)
	if r := rs[0].Rates; r == nil || r.RxPPS != 100 || r.RxMbps != 1 || r.TxPPS != 2 || r.NodescPS != 2 {
		t.Fatalf("rates %+v (TX counter went back: the VI was recreated, rate from 0)", r)
	}
	if rs[1].Rates != nil {
		t.Fatalf("new VI got rates %+v", rs[1].Rates)
	}
	var out bytes.Buffer
	watchTable(&out, rs)
	if !strings.Contains(out.String(), "p-vi1") || !strings.Contains(out.String(), "1.00") {
		t.Fatalf("watch table:\n%s", out.String())
	}
}

// agent is a real port with the data plane, one allocation of slot 1 whose
// VI the "CNI" created with a filter, and the diagnostics server.
type agent struct {
	topo   *bench.Topology
	socket string
	device string
}

func newAgent(t *testing.T) *agent {
	topo := bench.NewTopology(t)
	if err := dataplane.EnsureBPFFS(dataplane.DefaultBPFFS); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 4)
	_, _ = rand.Read(r)
	plane, err := dataplane.Open(context.Background(), dataplane.PortConfig{
		Ifname: topo.Port.Name, PinDir: filepath.Join(dataplane.DefaultBPFFS, "efvt-ctl-"+hex.EncodeToString(r)), VethPrefix: "ec" + hex.EncodeToString(r[:2]),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plane.Destroy() })
	port, err := viservice.NewPort(topo.Port.Name, topo.Port.MAC, 1500, plane)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{topo: topo, device: topo.Port.Name + "-vi1", socket: filepath.Join(t.TempDir(), "efvictl.sock")}
	alloc, err := viservice.NewAllocation("fast", port, []string{a.device}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if err := alloc.SetPolicy(filter.Policy{OwnIPs: []netip.Addr{topo.PortIP}}); err != nil {
		t.Fatal(err)
	}
	spec, err := filter.ParseWithDefaultHost("udp:7777", topo.PortIP)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alloc.Attach(context.Background(), "ctr/eth0", []filter.Spec{spec}); err != nil {
		t.Fatal(err)
	}
	reg := viservice.NewRegistry()
	reg.AddPort(port)
	if err := reg.Add("alloc-9", alloc); err != nil {
		t.Fatal(err)
	}
	in := introspect.New(introspect.Config{Registry: reg, PodNamer: func(id string) (string, string, bool) { return "default", "md-feed", id == "alloc-9" }})
	srv, err := introspect.Listen(a.socket, in)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		in.Close()
	})
	return a
}

func (a *agent) efvictl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(ctx, append([]string{"-socket", a.socket}, args...), &out, &errOut); code != 0 {
		t.Fatalf("efvictl %q: exit %d: %s", args, code, errOut.String())
	}
	return out.String()
}

func (a *agent) send(t *testing.T, payloads ...string) {
	t.Helper()
	if err := a.topo.Fabric.Do(func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: a.topo.PortIP.AsSlice(), Port: 7777})
		if err != nil {
			return err
		}
		defer c.Close()
		for _, p := range payloads {
			if _, err := c.Write([]byte(p)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestCommandsOnRealDataPlane runs efvictl's commands against an agent's
// diagnostics server on a real port: tables and JSON, stats before and
// after traffic, and a capture file.
func TestCommandsOnRealDataPlane(t *testing.T) {
	a := newAgent(t)
	ctx := context.Background()
	if out := a.efvictl(t, ctx, "ports"); !strings.Contains(out, a.topo.Port.Name) || !strings.Contains(out, "attached") {
		t.Errorf("ports:\n%s", out)
	}
	if out := a.efvictl(t, ctx, "vis", "md-feed"); !strings.Contains(out, a.device) || !strings.Contains(out, "default") || !strings.Contains(out, "alloc-9") {
		t.Errorf("vis:\n%s", out)
	}
	var before []api.VIStats
	if err := json.Unmarshal([]byte(a.efvictl(t, ctx, "stats", "-o", "json", "default/md-feed")), &before); err != nil || len(before) != 1 {
		t.Fatalf("stats JSON %+v: %v", before, err)
	}
	if before[0].Socket != nil {
		t.Fatalf("a VI nobody opened has socket stats: %+v", before[0])
	}
	const n = 12
	var payloads []string
	for i := 0; i < n; i++ {
		payloads = append(payloads, fmt.Sprintf("efvictl-%02d", i))
	}
	// Capture while the traffic flows: efvictl capture -c n -w file.
	pcap := filepath.Join(t.TempDir(), "vi.pcap")
	capDone := make(chan string, 1)
	go func() {
		var out, errOut bytes.Buffer
		code := run(ctx, []string{"-socket", a.socket, "capture", a.device, "-w", pcap, "-c", fmt.Sprint(n), "-timeout", "30s"}, &out, &errOut)
		capDone <- fmt.Sprintf("%d %s", code, errOut.String())
	}()
	// Send only once the capture switch is on (the ports view lists the VI
	// as capturing); a capture that ends first, or a switch that is not on by
	// the hang guard's deadline, fails the test.
	capturing := func() bool {
		var ports []api.PortInfo
		out := a.efvictl(t, ctx, "ports", "-o", "json")
		if err := json.Unmarshal([]byte(out), &ports); err != nil {
			t.Fatalf("ports JSON %q: %v", out, err)
		}
		for _, p := range ports {
			if slices.Contains(p.Capturing, a.device) {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(15 * time.Second)
	for !capturing() {
		if time.Now().After(deadline) {
			t.Fatalf("capture switch of %s not on after 15 s:\n%s", a.device, a.efvictl(t, ctx, "ports"))
		}
		select {
		case res := <-capDone:
			t.Fatalf("capture ended before its switch was seen on: %s", res)
		case <-time.After(10 * time.Millisecond):
		}
	}
	a.send(t, payloads...)
	res := <-capDone
	if !strings.HasPrefix(res, "0 ") || !strings.Contains(res, fmt.Sprintf("%d frames captured (%d rx, 0 tx), 0 dropped", n, n)) {
		t.Fatalf("capture: %s", res)
	}
	b, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	// Header (24) + n records of 16 + frame bytes, frames in order.
	if len(b) < 24 || binary.NativeEndian.Uint32(b) != 0xa1b2c3d4 || binary.NativeEndian.Uint32(b[20:]) != 1 {
		t.Fatalf("not an Ethernet pcap: %x", b[:min(len(b), 24)])
	}
	off := 24
	for i := 0; i < n; i++ {
		incl := int(binary.NativeEndian.Uint32(b[off+8:]))
		frame := b[off+16 : off+16+incl]
		if !bytes.HasSuffix(frame, []byte(payloads[i])) {
			t.Fatalf("record %d: %x does not end with %q", i, frame, payloads[i])
		}
		off += 16 + incl
	}
	if off != len(b) {
		t.Fatalf("%d trailing bytes after %d records", len(b)-off, n)
	}

	var after []api.VIStats
	if err := json.Unmarshal([]byte(a.efvictl(t, ctx, "stats", "-o", "json", a.device)), &after); err != nil || len(after) != 1 {
		t.Fatalf("stats JSON %+v: %v", after, err)
	}
	if d := after[0].RxPackets - before[0].RxPackets; d != n {
		t.Errorf("rx packets moved by %d, want %d", d, n)
	}
	if out := a.efvictl(t, ctx, "stats", a.device); !strings.Contains(out, fmt.Sprintf("%d", after[0].RxBytes)) || !strings.Contains(out, "RX NODESC") {
		t.Errorf("stats table:\n%s", out)
	}
	out := a.efvictl(t, ctx, "filters")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if f := strings.Fields(lines[len(lines)-1]); len(lines) != 2 || !strings.Contains(out, "cni (ctr/eth0)") || f[len(f)-1] != fmt.Sprint(n) {
		t.Errorf("filters table (want one CNI filter with %d hits):\n%s", n, out)
	}
	if out := a.efvictl(t, ctx, "watch", "-n", "2", "-interval", "10ms", "-o", "json"); strings.Count(out, "\n") != 2 || !strings.Contains(out, `"rates"`) {
		t.Errorf("watch JSON:\n%s", out)
	}
	var errOut bytes.Buffer
	if code := run(ctx, []string{"-socket", a.socket, "stats", "nobody"}, &bytes.Buffer{}, &errOut); code != 1 || !strings.Contains(errOut.String(), "default/md-feed") {
		t.Errorf("unknown pod: exit %d, %q", code, errOut.String())
	}
}
