package introspect_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/introspect"
	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// waitLimit guards against hangs; it is not a timing assertion.
const waitLimit = 15 * time.Second

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// node is an agent's worth of real parts: a port with the data plane, one
// allocation of slot 2 served by a broker, the registry, and the
// diagnostics server with its client.
type node struct {
	topo   *bench.Topology
	plane  *dataplane.Port
	port   *viservice.Port
	alloc  *viservice.Allocation
	device string
	broker *broker.Client
	client *api.Client
	vi     *broker.VI
}

func newNode(t *testing.T) *node {
	t.Helper()
	topo := bench.NewTopology(t)
	topo.PrepareDataPlane(t)
	dir := t.TempDir()
	plane, err := dataplane.Open(context.Background(), dataplane.PortConfig{
		Ifname: topo.Port.Name, PinDir: filepath.Join(dataplane.DefaultBPFFS, "efvt-ins-"+randHex(4)), VethPrefix: "ei" + randHex(2),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := plane.Destroy(); err != nil {
			t.Errorf("destroy data plane: %v", err)
		}
	})
	n := &node{topo: topo, plane: plane, device: topo.Port.Name + "-vi2"}
	if n.port, err = viservice.NewPort(topo.Port.Name, topo.Port.MAC, 1500, plane); err != nil {
		t.Fatal(err)
	}
	if n.alloc, err = viservice.NewAllocation("testpool", n.port, []string{n.device}, slog.Default()); err != nil {
		t.Fatal(err)
	}
	if err := n.alloc.SetPolicy(filter.Policy{OwnIPs: []netip.Addr{topo.PortIP}}); err != nil {
		t.Fatal(err)
	}
	reg := viservice.NewRegistry()
	reg.AddPort(n.port)
	if err := reg.Add("alloc-1", n.alloc); err != nil {
		t.Fatal(err)
	}
	bsrv, err := broker.Listen(broker.Config{Path: filepath.Join(dir, "broker.sock"), Mode: 0o600, Sessions: n.alloc, Authorizer: broker.AllowAny()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- bsrv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		bsrv.Close()
		<-served
	})

	pods := func(id string) (string, string, bool) {
		if id == "alloc-1" {
			return "team", "trader", true
		}
		return "", "", false
	}
	in := introspect.New(introspect.Config{Registry: reg, PodNamer: pods, Logger: slog.Default()})
	srv, err := introspect.Listen(filepath.Join(dir, "run", "efvictl.sock"), in)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(srv.Path()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("diagnostics socket mode %v (%v), want 0600", fi.Mode(), err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- srv.Serve(sctx) }()
	n.client = api.NewClient(srv.Path())
	t.Cleanup(func() {
		n.client.Close()
		scancel()
		if err := <-sdone; err != nil {
			t.Errorf("serve: %v", err)
		}
		if err := in.Close(); err != nil {
			t.Errorf("close inspector: %v", err)
		}
	})

	// The pod's side: a VI opened through the broker, no RX buffers posted.
	if n.broker, err = broker.Dial(context.Background(), filepath.Join(dir, "broker.sock")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.broker.Close() })
	pd, err := n.broker.AllocPD(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := n.broker.RegisterMemory(ctx, pd, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.File.Close() })
	if n.vi, err = n.broker.AllocVI(ctx, broker.AllocVIRequest{PD: pd, MemReg: mem.ID, EvqCap: -1, RxqCap: -1, TxqCap: -1}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.vi.File.Close() })
	return n
}

// sendUDP sends datagrams from the fabric namespace to the port's IP.
func (n *node) sendUDP(t *testing.T, port int, payloads ...string) {
	t.Helper()
	if err := n.topo.Fabric.Do(func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: n.topo.PortIP.AsSlice(), Port: port})
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

// waitStats polls stats until ok accepts them (hang guard only).
func (n *node) waitStats(t *testing.T, target string, ok func(api.VIStats) bool) api.VIStats {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	var last []api.VIStats
	for time.Now().Before(deadline) {
		st, err := n.client.Stats(context.Background(), target)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == 1 && ok(st[0]) {
			return st[0]
		}
		last = st
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("stats never reached the expected values: %+v", last)
	return api.VIStats{}
}

// TestCountersAndDiagnostics drives real traffic into a VI opened through
// the broker that posts no RX buffers: the data-plane counters, the
// no-descriptor drops, the filter hits and the Prometheus counters move;
// ports, VIs and filters are described; unknown targets get clear errors.
func TestCountersAndDiagnostics(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	if _, err := n.broker.FilterAdd(ctx, n.vi.ID, "udp:5000", 0); err != nil {
		t.Fatal(err)
	}
	cniSpec, err := filter.ParseWithDefaultHost("udp:5001", n.topo.PortIP)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.alloc.Attach(ctx, "container1/eth0", []filter.Spec{cniSpec}); err != nil {
		t.Fatal(err)
	}

	before := n.waitStats(t, "team/trader", func(api.VIStats) bool { return true })
	if before.Socket == nil {
		t.Fatalf("stats %+v: no socket statistics for a VI the broker handed out", before)
	}
	const count = 20
	var payloads []string
	for i := 0; i < count; i++ {
		payloads = append(payloads, fmt.Sprintf("nodesc-%02d", i))
	}
	n.sendUDP(t, 5000, payloads...)
	frameLen := uint64(14 + 20 + 8 + len(payloads[0]))
	after := n.waitStats(t, "trader", func(s api.VIStats) bool {
		return s.RxPackets-before.RxPackets == count && s.Socket != nil && s.Socket.RxNoDescDrops-before.Socket.RxNoDescDrops == count
	})
	if d := after.RxBytes - before.RxBytes; d != count*frameLen {
		t.Errorf("rx bytes moved by %d, want %d", d, count*frameLen)
	}
	if after.TxPackets != before.TxPackets || after.TxSpoofDrops != before.TxSpoofDrops {
		t.Errorf("TX counters moved without TX: %+v → %+v", before, after)
	}
	if after.Device != n.device || after.Pool != "testpool" || after.Namespace != "team" || after.Pod != "trader" || after.Allocation != "alloc-1" {
		t.Errorf("stats identity %+v", after)
	}
	// The broker's own stats agree (the same socket).
	bst, err := n.broker.Stats(ctx, n.vi.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range bst {
		if s.Name == "rx_nodesc_drops" && s.Value != after.Socket.RxNoDescDrops {
			t.Errorf("broker says rx_nodesc_drops %d, efvictl %d", s.Value, after.Socket.RxNoDescDrops)
		}
	}

	filters, err := n.client.Filters(ctx, n.device)
	if err != nil {
		t.Fatal(err)
	}
	if len(filters) != 2 {
		t.Fatalf("filters %+v, want the session's and the CNI's", filters)
	}
	owners := map[string]api.FilterInfo{}
	for _, f := range filters {
		owners[f.Owner] = f
	}
	if f := owners["session"]; !strings.HasSuffix(f.Spec, ":5000") || f.Hits != count || f.Pod != "trader" {
		t.Errorf("session filter %+v, want udp ...:5000 with %d hits", f, count)
	}
	if f := owners["cni"]; !strings.HasSuffix(f.Spec, ":5001") || f.Hits != 0 || f.Attachment != "container1/eth0" {
		t.Errorf("CNI filter %+v, want udp ...:5001, 0 hits, attachment container1/eth0", f)
	}

	vis, err := n.client.VIs(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(vis) != 1 || vis[0].Device != n.device || !vis[0].DataPlane || !vis[0].Socket || vis[0].Veth == "" || vis[0].PeerVeth != vis[0].Veth+"p" || vis[0].Pod != "trader" {
		t.Fatalf("vis %+v", vis)
	}
	// The allocation's pinned memory: the broker's 1 MiB region, now the UMEM
	// of its one VI, and the session's one filter.
	if v := vis[0]; v.AllocationPinnedBytes != 1<<20 || v.AllocationVIs != 1 || v.AllocationFilters != 1 {
		t.Errorf("vis usage: pinned %d VIs %d filters %d, want 1 MiB, 1, 1", v.AllocationPinnedBytes, v.AllocationVIs, v.AllocationFilters)
	}
	ports, err := n.client.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 1 || ports[0].Name != n.topo.Port.Name || ports[0].DataPlane != "attached" || ports[0].Ifindex != n.topo.Port.Index || ports[0].VIs != 1 || ports[0].MAC != net.HardwareAddr(n.topo.Port.MAC).String() {
		t.Fatalf("ports %+v", ports)
	}

	// Prometheus: the same counters, labelled.
	text, err := n.client.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	labels := fmt.Sprintf(`{namespace="team",pod="trader",pool="testpool",port=%q,vi=%q}`, n.topo.Port.Name, n.device)
	for _, want := range []string{
		fmt.Sprintf("efvi_vi_rx_packets_total%s %d", labels, after.RxPackets),
		fmt.Sprintf("efvi_vi_rx_nodesc_drops_total%s %d", labels, after.Socket.RxNoDescDrops),
		fmt.Sprintf("efvi_vi_rx_ring_full_total%s %d", labels, after.Socket.RxRingFull),
		fmt.Sprintf("efvi_vi_tx_spoof_drops_total%s 0", labels),
		`efvi_allocation_pinned_bytes{allocation="alloc-1",namespace="team",pod="trader",pool="testpool"} 1.048576e+06`,
		`efvi_allocation_vis{allocation="alloc-1",namespace="team",pod="trader",pool="testpool"} 1`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	if !strings.Contains(text, `efvi_vi_filter_hits_total{filter="udp:`) {
		t.Errorf("metrics lack filter hits:\n%s", text)
	}

	// Clear errors.
	for _, c := range []struct {
		target string
		status int
		says   []string
	}{
		{"nosuchpod", http.StatusNotFound, []string{`"nosuchpod"`, "team/trader", n.device}},
		{"other/trader", http.StatusNotFound, []string{"team/trader"}},
		{n.topo.Port.Name + "-vi9", http.StatusNotFound, []string{"no VI " + n.topo.Port.Name + "-vi9", n.device}},
		{"eth-nope-vi1", http.StatusNotFound, []string{"ports: " + n.topo.Port.Name}},
	} {
		_, err := n.client.Stats(ctx, c.target)
		var e *api.Error
		if !errors.As(err, &e) || e.Status != c.status {
			t.Errorf("stats %q: %v, want HTTP %d", c.target, err, c.status)
			continue
		}
		for _, s := range c.says {
			if !strings.Contains(e.Msg, s) {
				t.Errorf("stats %q: error %q does not mention %q", c.target, e.Msg, s)
			}
		}
	}
	if _, err := n.client.Capture(ctx, "nosuchpod", api.CaptureOptions{Count: 1}, &bytes.Buffer{}, nil); err == nil || !strings.Contains(err.Error(), "team/trader") {
		t.Errorf("capture of an unknown pod: %v", err)
	}
}

// pcapRecord is one record of a classic pcap file.
type pcapRecord struct {
	ts      time.Time
	data    []byte
	origLen uint32
}

// readPcap parses a classic pcap (either byte order, µs or ns timestamps).
func readPcap(b []byte) (linktype uint32, recs []pcapRecord, err error) {
	if len(b) < 24 {
		return 0, nil, fmt.Errorf("pcap of %d bytes has no header", len(b))
	}
	var e binary.ByteOrder
	nano := false
	switch {
	case binary.LittleEndian.Uint32(b) == 0xa1b2c3d4:
		e = binary.LittleEndian
	case binary.BigEndian.Uint32(b) == 0xa1b2c3d4:
		e = binary.BigEndian
	case binary.LittleEndian.Uint32(b) == 0xa1b23c4d:
		e, nano = binary.LittleEndian, true
	case binary.BigEndian.Uint32(b) == 0xa1b23c4d:
		e, nano = binary.BigEndian, true
	default:
		return 0, nil, fmt.Errorf("bad pcap magic %x", b[:4])
	}
	if e.Uint16(b[4:]) != 2 || e.Uint16(b[6:]) != 4 {
		return 0, nil, fmt.Errorf("pcap version %d.%d, want 2.4", e.Uint16(b[4:]), e.Uint16(b[6:]))
	}
	snap, linktype := e.Uint32(b[16:]), e.Uint32(b[20:])
	b = b[24:]
	for len(b) > 0 {
		if len(b) < 16 {
			return 0, nil, fmt.Errorf("truncated record header (%d bytes)", len(b))
		}
		sec, frac, incl, orig := e.Uint32(b), e.Uint32(b[4:]), e.Uint32(b[8:]), e.Uint32(b[12:])
		if incl > snap || incl > orig || int(incl) > len(b)-16 {
			return 0, nil, fmt.Errorf("bad record: incl %d orig %d snap %d, %d bytes left", incl, orig, snap, len(b)-16)
		}
		if !nano {
			frac *= 1000
		}
		recs = append(recs, pcapRecord{ts: time.Unix(int64(sec), int64(frac)), data: b[16 : 16+incl], origLen: orig})
		b = b[16+incl:]
	}
	return linktype, recs, nil
}

// TestCapturePcap captures a VI's RX (datagrams from the fabric, stolen
// for the VI) and TX (frames the VI sends, through its TX program) into a
// pcap and checks it against what was sent.
func TestCapturePcap(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	if _, err := n.broker.FilterAdd(ctx, n.vi.ID, "udp:6000", 0); err != nil {
		t.Fatal(err)
	}
	vis, err := n.client.VIs(ctx, n.device)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.InterfaceByName(vis[0].PeerVeth)
	if err != nil {
		t.Fatal(err)
	}
	// TX path: a frame written on the VI's peer veth goes through the VI's
	// TX program exactly as the XSK's frames do.
	txSock, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(txSock)
	if err := unix.Bind(txSock, &unix.SockaddrLinklayer{Ifindex: peer.Index}); err != nil {
		t.Fatal(err)
	}

	const count = 8
	var out bytes.Buffer
	started := make(chan struct{})
	type result struct {
		sum api.CaptureSummary
		err error
	}
	res := make(chan result, 1)
	cctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	go func() {
		sum, err := n.client.Capture(cctx, "team/trader", api.CaptureOptions{Count: 2 * count}, &out, func() { close(started) })
		res <- result{sum, err}
	}()
	select {
	case <-started:
	case r := <-res:
		t.Fatalf("capture ended before starting: %v", r.err)
	}
	// A second capture of the same VI is refused while this one runs.
	if _, err := n.client.Capture(ctx, n.device, api.CaptureOptions{Count: 1}, &bytes.Buffer{}, nil); err == nil || !strings.Contains(err.Error(), "already being captured") {
		t.Errorf("concurrent capture: %v", err)
	}
	var rxWant, txWant []string
	var txFrames [][]byte
	for i := 0; i < count; i++ {
		rxWant = append(rxWant, fmt.Sprintf("cap-rx-%02d", i))
		txWant = append(txWant, fmt.Sprintf("cap-tx-%02d", i))
		txFrames = append(txFrames, udpFrame(n.topo.Port.MAC, n.topo.Wire.MAC, n.topo.PortIP, n.topo.FabricIP, 7000, []byte(txWant[i])))
	}
	n.sendUDP(t, 6000, rxWant...)
	for _, f := range txFrames {
		if _, err := unix.Write(txSock, f); err != nil {
			t.Fatal(err)
		}
	}
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.sum.Rx != count || r.sum.Tx != count || r.sum.Dropped != 0 {
		t.Errorf("summary %+v, want %d rx, %d tx, 0 dropped", r.sum, count, count)
	}
	lt, recs, err := readPcap(out.Bytes())
	if err != nil {
		t.Fatalf("pcap does not parse: %v", err)
	}
	if lt != 1 {
		t.Fatalf("linktype %d, want 1 (Ethernet)", lt)
	}
	var rxGot, txGot []string
	for _, rec := range recs {
		if rec.origLen != uint32(len(rec.data)) || time.Since(rec.ts) > time.Hour || time.Until(rec.ts) > time.Minute {
			t.Errorf("record len %d/%d at %v", len(rec.data), rec.origLen, rec.ts)
		}
		payload, dst, src := udpPayload(rec.data)
		switch {
		case bytes.Equal(dst, n.topo.Port.MAC) && bytes.Equal(src, n.topo.Wire.MAC):
			rxGot = append(rxGot, string(payload))
		case bytes.Equal(src, n.topo.Port.MAC) && bytes.Equal(dst, n.topo.Wire.MAC):
			txGot = append(txGot, string(payload))
			if !slicesContainsFrame(txFrames, rec.data) {
				t.Errorf("TX record %x is not a frame that was sent", rec.data)
			}
		default:
			t.Errorf("record %x is neither direction", rec.data)
		}
	}
	if strings.Join(rxGot, ",") != strings.Join(rxWant, ",") {
		t.Errorf("RX payloads %q, want %q", rxGot, rxWant)
	}
	if strings.Join(txGot, ",") != strings.Join(txWant, ",") {
		t.Errorf("TX payloads %q, want %q", txGot, txWant)
	}
	// The switch is off again.
	ports, err := n.client.Ports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports[0].Capturing) != 0 {
		t.Errorf("still capturing %v after the capture ended", ports[0].Capturing)
	}
}

func slicesContainsFrame(frames [][]byte, f []byte) bool {
	for _, x := range frames {
		if bytes.Equal(x, f) {
			return true
		}
	}
	return false
}

// udpFrame builds an Ethernet/IPv4/UDP frame.
func udpFrame(src, dst net.HardwareAddr, sip, dip netip.Addr, dport uint16, payload []byte) []byte {
	b := append(append([]byte(nil), dst...), src...)
	b = append(b, 0x08, 0x00)
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	s4, d4 := sip.As4(), dip.As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := make([]byte, 8)
	binary.BigEndian.PutUint16(udp[0:], 41000)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	return append(append(append(b, ip...), udp...), payload...)
}

// udpPayload returns an untagged IPv4/UDP frame's payload and MACs.
func udpPayload(f []byte) (payload, dst, src []byte) {
	if len(f) < 42 || f[12] != 0x08 || f[13] != 0 || f[23] != 17 {
		return nil, nil, nil
	}
	ihl := int(f[14]&0x0f) * 4
	if len(f) < 14+ihl+8 {
		return nil, nil, nil
	}
	return f[14+ihl+8:], f[0:6], f[6:12]
}
