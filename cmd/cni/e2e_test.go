package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/kube-efvi/kube-efvi/internal/bench"
	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/attach"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/kubeletcheckpoint"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stypes "k8s.io/apimachinery/pkg/types"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// ---- fakes for the Kubernetes side (the kubelet's PodResources API is a
// real gRPC server on a unix socket; the API server is a map) ----

type fakeKubelet struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	mu   sync.Mutex
	pods []*podresourcesv1.PodResources
	// checkpoint is the device manager checkpoint, written as the kubelet
	// writes it (temp file + rename) when a pod gets devices.
	checkpoint string
	entries    []kubeletcheckpoint.Entry
}

func (k *fakeKubelet) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return &podresourcesv1.ListPodResourcesResponse{PodResources: slices.Clone(k.pods)}, nil
}

func (k *fakeKubelet) add(t testing.TB, ns, name, uid, resource string, devices ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pods = append(k.pods, &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: []*podresourcesv1.ContainerResources{
		{Name: "sidecar"},
		{Name: "app", Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: devices}}},
	}})
	k.entries = append(k.entries, kubeletcheckpoint.Entry{PodUID: uid, ContainerName: "app", ResourceName: resource, DeviceIDs: devices})
	k.writeCheckpointLocked(t)
}

func (k *fakeKubelet) writeCheckpointLocked(t testing.TB) {
	b, err := kubeletcheckpoint.Marshal(k.entries)
	if err != nil {
		t.Fatal(err)
	}
	tmp := k.checkpoint + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, k.checkpoint); err != nil {
		t.Fatal(err)
	}
}

type fakePods struct {
	mu   sync.Mutex
	pods map[string]*corev1.Pod
}

func (f *fakePods) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pods[ns+"/"+name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
	}
	return p.DeepCopy(), nil
}

func (f *fakePods) add(ns, name, uid, filters string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID(uid)}}
	if filters != "" {
		p.Annotations = map[string]string{cniapi.Annotation: filters}
	}
	f.pods[ns+"/"+name] = p
}

type event struct{ pod, typ, reason, msg string }

type fakeEvents struct {
	mu     sync.Mutex
	events []event
}

func (f *fakeEvents) Event(obj runtime.Object, typ, reason, msg string) {
	p := obj.(*corev1.Pod)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, event{p.Namespace + "/" + p.Name, typ, reason, msg})
}

func (f *fakeEvents) find(pod, reason string) (event, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.events {
		if e.pod == pod && e.reason == reason {
			return e, true
		}
	}
	return event{}, false
}

// ---- the node: port + data plane + viservice + attach service + agent socket ----

const (
	pool     = "testpool"
	resource = "efvi.io/" + pool
	netName  = "efvi-e2e"
)

type node struct {
	t       testing.TB
	topo    *bench.Topology
	plane   *dataplane.Port
	port    *viservice.Port
	reg     *viservice.Registry
	kubelet *fakeKubelet
	pods    *fakePods
	events  *fakeEvents
	svc     *attach.Service
	sock    string
	state   string
	devSock string
	stop    func()
	binDir  string
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// buildPlugins builds efvi-cni and the test prevResult plugin once per run.
var buildOnce struct {
	sync.Once
	dir string
	err error
}

func buildPlugins(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "efvi-cni-bin")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.dir = dir
		for _, b := range []struct{ out, pkg string }{{"efvi-cni", "."}, {"efvi-test-prev", "./testdata/prevplugin"}} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildOnce.err = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildOnce.dir != "" {
		os.RemoveAll(buildOnce.dir)
	}
	os.Exit(code)
}

func newNode(t testing.TB) *node {
	t.Helper()
	testnet.RequireRoot(t)
	bin := buildPlugins(t)
	topo := bench.NewTopology(t)
	topo.PrepareDataPlane(t)
	dir := t.TempDir()
	n := &node{t: t, topo: topo, binDir: bin,
		kubelet: &fakeKubelet{checkpoint: filepath.Join(dir, kubeletcheckpoint.FileName)}, pods: &fakePods{pods: map[string]*corev1.Pod{}}, events: &fakeEvents{},
		sock: filepath.Join(dir, "agent.sock"), state: filepath.Join(dir, "cni-attachments.json"),
		devSock: filepath.Join(dir, "kubelet.sock")}
	plane, err := dataplane.Open(context.Background(), dataplane.PortConfig{
		Ifname: topo.Port.Name, PinDir: filepath.Join(dataplane.DefaultBPFFS, "efct-"+randHex(4)),
		VethPrefix: "ec" + randHex(2), Logger: slog.Default()})
	if err != nil {
		t.Fatalf("open data plane: %v", err)
	}
	n.plane = plane
	t.Cleanup(func() {
		if err := plane.Destroy(); err != nil {
			t.Errorf("destroy data plane: %v", err)
		}
	})
	n.port, err = viservice.NewPort(topo.Port.Name, topo.Port.MAC, 1500, plane)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.port.Persist(filepath.Join(dir, "port.json")); err != nil {
		t.Fatal(err)
	}
	n.reg = viservice.NewRegistry()
	n.reg.AddPort(n.port)

	// The kubelet's PodResources API, for real over gRPC.
	lis, err := net.Listen("unix", n.devSock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(gs, n.kubelet)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)

	n.kubelet.writeCheckpointLocked(t)
	n.startAgent()
	t.Cleanup(func() { n.stop() })

	n.cni = libcni.NewCNIConfigWithCacheDir([]string{bin}, filepath.Join(dir, "cache"), nil)
	n.list = n.conflist(`"timeout":"20s"`)
	return n
}

// startAgent starts the attach service and its socket (again after stop:
// an agent restart, with the state file and the port's own state).
func (n *node) startAgent() {
	t := n.t
	devs, err := attach.DialKubelet(n.devSock)
	if err != nil {
		t.Fatal(err)
	}
	n.svc, err = attach.New(attach.Config{
		Registry: n.reg, Devices: devs, Pods: n.pods, Events: n.events, StatePath: n.state,
		Allowance: func(p, ns string) config.Allowance {
			return config.FilterPolicy{Namespaces: map[string]config.Allowance{"mcast": {AllowMulticast: true}}}.For(ns)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := cniapi.Listen(n.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := cniapi.NewServer(n.svc, slog.Default())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	n.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent API: %v", err)
		}
		devs.Close()
		n.stop = func() {}
	}
}

func (n *node) conflist(extra string) *libcni.NetworkConfigList {
	return n.conflistVersion("1.1.0", extra)
}

func (n *node) conflistVersion(cniVersion, extra string) *libcni.NetworkConfigList {
	n.t.Helper()
	if extra != "" {
		extra = "," + extra
	}
	text := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"efvi-test-prev"},{"type":"efvi-cni","agentSocket":%q,"kubeletCheckpoint":%q%s}]}`,
		cniVersion, netName, n.sock, n.kubelet.checkpoint, extra)
	l, err := libcni.ConfListFromBytes([]byte(text))
	if err != nil {
		n.t.Fatalf("conflist %s: %v", text, err)
	}
	return l
}

// pod is one pod of a test: its netns, its VI allocation, its runtime conf.
type pod struct {
	ns, name, uid string
	netns         *testnet.NS
	rt            *libcni.RuntimeConf
	alloc         *viservice.Allocation
}

func (n *node) newPod(ns, name string, slot int, ips []string, annotation string) *pod {
	t := n.t
	t.Helper()
	p := &pod{ns: ns, name: name, uid: "uid-" + randHex(4), netns: testnet.NewNS(t)}
	if slot >= 0 {
		dev := fmt.Sprintf("%s-vi%d", n.topo.Port.Name, slot)
		a, err := viservice.NewAllocation(pool, n.port, []string{dev}, slog.Default())
		if err != nil {
			t.Fatal(err)
		}
		if err := n.reg.Add("alloc-"+name, a); err != nil {
			t.Fatal(err)
		}
		p.alloc = a
		n.kubelet.add(t, ns, name, p.uid, resource, dev)
	}
	n.pods.add(ns, name, p.uid, annotation)
	p.rt = &libcni.RuntimeConf{ContainerID: "ctr-" + randHex(8), NetNS: p.netns.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", ns}, {"K8S_POD_NAME", name},
			{"K8S_POD_UID", p.uid}, {"TEST_IPS", strings.Join(ips, ",")}}}
	return p
}

func (n *node) add(p *pod) (types.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.cni.AddNetworkList(ctx, n.list, p.rt)
}

func (n *node) del(p *pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.cni.DelNetworkList(ctx, n.list, p.rt)
}

func (n *node) check(p *pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.cni.CheckNetworkList(ctx, n.list, p.rt)
}

// cniErr extracts the plugin's CNI error.
func cniErr(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return te
}

func udpSocket(t *testing.T, ns *testnet.NS, ip netip.Addr, port int) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	listen := func() (err error) {
		c, err = net.ListenUDP("udp", &net.UDPAddr{IP: ip.AsSlice(), Port: port})
		return err
	}
	var err error
	if ns != nil {
		err = ns.Do(listen)
	} else {
		err = listen()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, from *net.UDPConn, to netip.AddrPort, count int) {
	t.Helper()
	for i := 0; i < count; i++ {
		if _, err := from.WriteToUDPAddrPort([]byte(fmt.Sprintf("m-%d", i)), to); err != nil {
			t.Fatal(err)
		}
	}
}

// barrier waits until a datagram sent after the others reached the kernel.
func (n *node) barrier(t *testing.T, fab *net.UDPConn) {
	t.Helper()
	k := udpSocket(t, nil, n.topo.PortIP, 0)
	send(t, fab, netip.AddrPortFrom(n.topo.PortIP, uint16(k.LocalAddr().(*net.UDPAddr).Port)), 1)
	_ = k.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := k.ReadFromUDP(make([]byte, 64)); err != nil {
		t.Fatalf("barrier datagram did not reach the kernel: %v", err)
	}
	k.Close()
}

func nothing(t *testing.T, c *net.UDPConn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	if m, _, err := c.ReadFromUDP(buf); err == nil {
		t.Fatalf("%s received %q", what, buf[:m])
	}
}

func received(t *testing.T, c *net.UDPConn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.ReadFromUDP(make([]byte, 64)); err != nil {
		t.Fatalf("%s received nothing: %v", what, err)
	}
}

func rx(t *testing.T, n *node, slot uint32) uint64 {
	t.Helper()
	c, err := n.plane.VICounters(slot)
	if err != nil {
		t.Fatalf("VI %d counters: %v", slot, err)
	}
	return c.RxPackets
}

// TestChainLifecycle drives the real plugin binary through libcni as a
// runtime would, against the real agent pieces and data plane.
func TestChainLifecycle(t *testing.T) {
	n := newNode(t)
	podIP := n.topo.PortIP.String()
	fab := udpSocket(t, n.topo.Fabric, n.topo.FabricIP, 6001)
	kern := udpSocket(t, nil, netip.IPv4Unspecified(), 5000)

	// ADD: the annotation's host-less spec becomes the pod IP's filter.
	a := n.newPod("team", "a", 3, []string{podIP + "/24"}, "udp:5000")
	res, err := n.add(a)
	if err != nil {
		t.Fatalf("ADD a: %v", err)
	}
	out, _ := json.Marshal(res)
	if !strings.Contains(string(out), podIP) {
		t.Fatalf("ADD result %s lost prevResult's IP", out)
	}
	if e, ok := n.events.find("team/a", attach.ReasonInstalled); !ok || !strings.Contains(e.msg, "udp:"+podIP+":5000") {
		t.Fatalf("FilterInstalled event %+v (found %v)", e, ok)
	}
	send(t, fab, netip.AddrPortFrom(n.topo.PortIP, 5000), 5)
	n.barrier(t, fab)
	nothing(t, kern, "kernel socket on the pod's filtered port")
	if got := rx(t, n, 3); got != 5 {
		t.Fatalf("pod a's VI received %d packets, want 5", got)
	}
	if err := n.check(a); err != nil {
		t.Fatalf("CHECK a: %v", err)
	}

	// A second pod claiming a's IP is refused, with the reason.
	b := n.newPod("team", "b", 5, []string{"10.241.0.7/24"}, "udp:"+podIP+":6000")
	_, err = n.add(b)
	te := cniErr(t, err)
	if te.Code != cniapi.CodeFilterRefused || !strings.Contains(te.Msg, "udp:"+podIP+":6000") || !strings.Contains(te.Msg, "team/b") {
		t.Fatalf("ADD b: code %d msg %q details %q; want %d naming the filter and the pod", te.Code, te.Msg, te.Details, cniapi.CodeFilterRefused)
	}
	if e, ok := n.events.find("team/b", attach.ReasonRefused); !ok || !strings.Contains(e.msg, "refused") {
		t.Fatalf("FilterRefused event %+v (found %v)", e, ok)
	}
	if err := n.del(b); err != nil { // the runtime cleans up after a failed ADD
		t.Fatalf("DEL b: %v", err)
	}
	// ...and so is one that steals a's flow with a's IP as its own (EEXIST).
	b2 := n.newPod("team", "b2", 6, []string{podIP + "/24"}, "udp:5000")
	if _, err = n.add(b2); cniErr(t, err).Code != cniapi.CodeFilterConflict {
		t.Fatalf("ADD b2 (same flow): %v, want code %d", err, cniapi.CodeFilterConflict)
	}

	// CHECK notices a filter removed behind the agent's back.
	spec, _ := filter.Parse("udp:" + podIP + ":5000")
	if err := n.plane.RemoveFilter(dataplane.Handle{VI: 3, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if err := n.check(a); err == nil {
		t.Fatal("CHECK passed with the filter gone from the data plane")
	} else if te := cniErr(t, err); te.Code != cniapi.CodeInternal && te.Code != cniapi.CodeNotInstalled {
		t.Fatalf("CHECK: %+v", te)
	}

	// DEL twice: both succeed, the filters and the VI are gone, the kernel
	// gets the flow again.
	for i := 0; i < 2; i++ {
		if err := n.del(a); err != nil {
			t.Fatalf("DEL a #%d: %v", i+1, err)
		}
	}
	if f := n.port.Filters(); len(f) != 0 {
		t.Fatalf("filters left after DEL: %v", f)
	}
	if len(n.svc.Records()) != 0 {
		t.Fatalf("records left after DEL: %+v", n.svc.Records())
	}
	send(t, fab, netip.AddrPortFrom(n.topo.PortIP, 5000), 1)
	received(t, kern, "kernel socket after DEL")

	// DEL after the netns is gone and after an agent restart (the restarted
	// agent has the port but no allocations yet, like a real one mid-start).
	c := n.newPod("team", "c", 4, []string{podIP + "/24"}, "udp:5000")
	if _, err := n.add(c); err != nil {
		t.Fatalf("ADD c: %v", err)
	}
	if err := c.netns.Delete(); err != nil {
		t.Fatal(err)
	}
	n.stop()
	n.reg.Remove("alloc-c")
	n.startAgent()
	if err := n.del(c); err != nil {
		t.Fatalf("DEL c after netns deletion and agent restart: %v", err)
	}
	if f := n.port.Filters(); len(f) != 0 || len(n.port.Attachments()) != 0 {
		t.Fatalf("after DEL c: filters %v attachments %v", f, n.port.Attachments())
	}

	// A pod with no VI: ADD and DEL succeed doing nothing.
	plain := n.newPod("team", "plain", -1, []string{"10.241.0.9/24"}, "udp:5000")
	if _, err := n.add(plain); err != nil {
		t.Fatalf("ADD of a pod without VIs: %v", err)
	}
	if err := n.check(plain); err != nil {
		t.Fatalf("CHECK of a pod without VIs: %v", err)
	}
	if err := n.del(plain); err != nil {
		t.Fatalf("DEL of a pod without VIs: %v", err)
	}
}

// TestChainGCAndStatus covers CNI 1.1 GC and STATUS.
func TestChainGCAndStatus(t *testing.T) {
	n := newNode(t)
	ip := n.topo.PortIP.String()
	keep := n.newPod("ns1", "keep", 2, []string{ip + "/24", "fd00:242::1/64"}, "udp:5000")
	drop := n.newPod("ns1", "drop", 3, []string{"10.242.0.8/24"}, "udp:7000")
	for _, p := range []*pod{keep, drop} {
		if _, err := n.add(p); err != nil {
			t.Fatalf("ADD %s: %v", p.name, err)
		}
	}
	// Dual stack: the host-less spec became one filter per pod IP.
	if r := n.svc.Records(); len(r) != 2 {
		t.Fatalf("records %+v", r)
	}
	if f := n.port.Filters(); len(f) != 3 {
		t.Fatalf("filters %v: want udp:5000 on both of keep's IPs and drop's udp:7000", f)
	}
	// GC from a runtime whose cache lost everything: only the valid list counts.
	other := libcni.NewCNIConfigWithCacheDir([]string{n.binDir}, t.TempDir(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := other.GCNetworkList(ctx, n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
		{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	r := n.svc.Records()
	if len(r) != 1 || r[0].PodName != "keep" {
		t.Fatalf("after GC records %+v, want keep's only", r)
	}
	if f := n.port.Filters(); len(f) != 2 {
		t.Fatalf("after GC filters %v, want keep's two", f)
	}
	if err := n.check(keep); err != nil {
		t.Fatalf("CHECK keep after GC: %v", err)
	}

	if err := n.cni.GetStatusNetworkList(ctx, n.list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	n.stop()
	// STATUS never fails for the agent: failing it makes the node NotReady.
	if err := n.cni.GetStatusNetworkList(ctx, n.list); err != nil {
		t.Fatalf("STATUS with the agent down: %v", err)
	}
	// DEL with the agent down succeeds (the runtime must not retry forever).
	if err := n.del(keep); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	n.startAgent()
	if err := n.del(keep); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if f := n.port.Filters(); len(f) != 0 {
		t.Fatalf("filters %v left", f)
	}
}

// TestChainBadInput: malformed stdin, netconf and annotation get clear errors.
func TestChainBadInput(t *testing.T) {
	n := newNode(t)
	ip := n.topo.PortIP.String()
	bad := n.newPod("ns1", "bad", 2, []string{ip + "/24"}, "udp:5000;udp:notaport")
	plain := n.newPod("ns1", "plain", -1, []string{"10.243.0.9/24"}, "")
	_, err := n.add(bad)
	te := cniErr(t, err)
	if te.Code != cniapi.CodeBadFilter || !strings.Contains(te.Msg, "annotation efvi.io/filters") || !strings.Contains(te.Msg, "notaport") {
		t.Fatalf("bad annotation: %+v", te)
	}
	if _, ok := n.events.find("ns1/bad", attach.ReasonRefused); !ok {
		t.Fatal("no FilterRefused event for a bad annotation")
	}
	if len(n.port.Filters()) != 0 || len(n.svc.Records()) != 0 {
		t.Fatal("a refused ADD left filters or records")
	}

	for _, tc := range []struct{ extra, want string }{
		{`"agentSockt":"/x"`, `"agentSockt" is unknown`},
		{`"timeout":"soon"`, `"timeout"`},
		{`"timeout":5`, `"timeout" must be a string`},
		{`"agentSocket":"relative.sock"`, `"agentSocket"`},
		{`"defaultFilters":"udp:70000"`, `"defaultFilters"`},
		{`"timeout":"500us"`, `"timeout"`},
	} {
		l := n.conflist(tc.extra)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := n.cni.AddNetworkList(ctx, l, bad.rt)
		te := cniErr(t, err)
		if te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, tc.want) || !strings.Contains(te.Msg, "ns1/bad") {
			t.Errorf("netconf %s: code %d msg %q, want 7, the pod and %q", tc.extra, te.Code, te.Msg, tc.want)
		}
		// DEL of the VI pod and everything for a pod without VIs succeed
		// whatever the netconf says.
		if err := n.cni.DelNetworkList(ctx, l, bad.rt); err != nil {
			t.Errorf("netconf %s: DEL of a VI pod failed: %v", tc.extra, err)
		}
		if _, err := n.cni.AddNetworkList(ctx, l, plain.rt); err != nil {
			t.Errorf("netconf %s: ADD of a pod without VIs failed: %v", tc.extra, err)
		}
		if err := n.cni.CheckNetworkList(ctx, l, plain.rt); err != nil {
			t.Errorf("netconf %s: CHECK of a pod without VIs failed: %v", tc.extra, err)
		}
		if err := n.cni.DelNetworkList(ctx, l, plain.rt); err != nil {
			t.Errorf("netconf %s: DEL of a pod without VIs failed: %v", tc.extra, err)
		}
		if err := n.cni.GetStatusNetworkList(ctx, l); err != nil {
			t.Errorf("netconf %s: STATUS failed: %v", tc.extra, err)
		}
		cancel()
	}
	// A bad kubeletCheckpoint falls back to the default path, which names
	// no checkpoint here: the plugin cannot tell, so the field is reported.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// On a node that runs a kubelet the default path holds the real
	// checkpoint, which does not list this pod: then ADD must pass.
	_, err = n.cni.AddNetworkList(ctx, n.conflist(`"kubeletCheckpoint":"relative"`), plain.rt)
	if _, serr := os.Stat(kubeletcheckpoint.DefaultPath); serr == nil {
		if err != nil {
			t.Errorf("bad kubeletCheckpoint, real checkpoint at the default path without this pod: ADD failed: %v", err)
		}
	} else if te := cniErr(t, err); te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, `"kubeletCheckpoint"`) {
		t.Errorf("bad kubeletCheckpoint: %+v", te)
	}

	// Raw stdin straight to the binary, for the VI pod.
	ck := fmt.Sprintf(`,"kubeletCheckpoint":%q`, n.kubelet.checkpoint)
	viArgs := "CNI_ARGS=K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=bad;K8S_POD_UID=" + bad.uid
	run := func(command, args, stdin string) ([]byte, error) {
		cmd := exec.Command(filepath.Join(n.binDir, "efvi-cni"))
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=x1", "CNI_NETNS=" + bad.netns.Path(), "CNI_IFNAME=eth0", "CNI_PATH=" + n.binDir, args}
		cmd.Stdin = strings.NewReader(stdin)
		return cmd.Output()
	}
	badPrev := `{"cniVersion":"1.0.0","name":"x","type":"efvi-cni"` + ck + `,"prevResult":{"ips":[{"address":"nonsense"}]}}`
	noPrev := `{"cniVersion":"1.0.0","name":"x","type":"efvi-cni"` + ck + `}`
	for _, tc := range []struct {
		stdin string
		code  uint
	}{
		{`not json`, types.ErrDecodingFailure},
		{badPrev, types.ErrDecodingFailure},
		{noPrev, types.ErrInvalidNetworkConfig}, // ADD without prevResult
	} {
		out, err := run("ADD", viArgs, tc.stdin)
		if err == nil {
			t.Errorf("stdin %q: plugin succeeded: %s", tc.stdin, out)
			continue
		}
		var e types.Error
		if jerr := json.Unmarshal(out, &e); jerr != nil || e.Code != tc.code || e.Msg == "" {
			t.Errorf("stdin %q: output %s, want a CNI error with code %d", tc.stdin, out, tc.code)
		}
	}
	// A pod without VIs gets prevResult back exactly as sent, whatever it is.
	plainArgs := "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=plain;K8S_POD_UID=" + plain.uid
	if out, err := run("ADD", plainArgs, badPrev); err != nil || strings.TrimSpace(string(out)) != `{"ips":[{"address":"nonsense"}]}` {
		t.Errorf("ADD of a pod without VIs, odd prevResult: %s, %v", out, err)
	}
	if out, err := run("ADD", plainArgs, noPrev); err != nil || strings.TrimSpace(string(out)) != `{"cniVersion":"1.0.0"}` {
		t.Errorf("ADD of a pod without VIs, no prevResult: %s, %v", out, err)
	}
	// DEL never fails on stdin: not JSON, an unsupported version, nothing.
	for _, stdin := range []string{`not json`, `{"cniVersion":"0.1.0"}`, ``, `{"cniVersion":7,"timeout":"x"}`} {
		if out, err := run("DEL", viArgs, stdin); err != nil {
			t.Errorf("DEL with stdin %q: %v: %s", stdin, err, out)
		}
	}
}

// TestChainAgentDown: with the agent gone, pods without VIs start, are
// checked and deleted as usual and STATUS passes; a VI pod's ADD fails with
// "try again later" naming the agent, and succeeds once the agent is back.
func TestChainAgentDown(t *testing.T) {
	n := newNode(t)
	ip := n.topo.PortIP.String()
	plain := n.newPod("team", "plain", -1, []string{"10.244.0.9/24"}, "udp:5000")
	vi := n.newPod("team", "vi", 3, []string{ip + "/24"}, "udp:5000")
	n.stop()

	res, err := n.add(plain)
	if err != nil {
		t.Fatalf("ADD of a pod without VIs, agent down: %v", err)
	}
	if out, _ := json.Marshal(res); !strings.Contains(string(out), "10.244.0.9") {
		t.Fatalf("ADD result %s lost prevResult", out)
	}
	if err := n.check(plain); err != nil {
		t.Fatalf("CHECK of a pod without VIs, agent down: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.cni.GetStatusNetworkList(ctx, n.list); err != nil {
		t.Fatalf("STATUS, agent down: %v", err)
	}
	// An old CNI version (Calico's and Cilium's conflists say 0.3.1).
	old := n.conflistVersion("0.3.1", "")
	plain2 := n.newPod("team", "plain2", -1, []string{"10.244.0.10/24"}, "")
	if _, err := n.cni.AddNetworkList(ctx, old, plain2.rt); err != nil {
		t.Fatalf("ADD on a 0.3.1 conflist, agent down: %v", err)
	}
	if err := n.cni.DelNetworkList(ctx, old, plain2.rt); err != nil {
		t.Fatalf("DEL on a 0.3.1 conflist: %v", err)
	}

	_, err = n.add(vi)
	te := cniErr(t, err)
	if te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, n.sock) || !strings.Contains(te.Msg, "agent") {
		t.Fatalf("ADD of a VI pod, agent down: code %d msg %q, want 11 naming the agent's socket", te.Code, te.Msg)
	}
	if err := n.del(vi); err != nil { // the runtime cleans up the failed sandbox
		t.Fatalf("DEL of a VI pod, agent down: %v", err)
	}
	if err := n.del(plain); err != nil {
		t.Fatalf("DEL of a pod without VIs, agent down: %v", err)
	}

	n.startAgent()
	if _, err := n.add(vi); err != nil {
		t.Fatalf("ADD of the VI pod after the agent is back: %v", err)
	}
	if f := n.port.Filters(); len(f) != 1 {
		t.Fatalf("filters %v, want the VI pod's udp:5000", f)
	}
	// The VI pod on an old CNI version works too.
	vi2 := n.newPod("team", "vi2", 4, []string{"10.244.0.11/24"}, "udp:5001")
	if _, err := n.cni.AddNetworkList(ctx, old, vi2.rt); err != nil {
		t.Fatalf("ADD of a VI pod on a 0.3.1 conflist: %v", err)
	}
	if err := n.cni.DelNetworkList(ctx, old, vi2.rt); err != nil {
		t.Fatalf("DEL on a 0.3.1 conflist: %v", err)
	}
	if err := n.del(vi); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if f := n.port.Filters(); len(f) != 0 {
		t.Fatalf("filters %v left", f)
	}

	// An unreadable checkpoint leaves the plugin unsure: it asks the agent,
	// which knows the pod holds no VI.
	if err := os.WriteFile(n.kubelet.checkpoint, []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := n.add(plain); err != nil {
		t.Fatalf("ADD with a torn checkpoint, agent up: %v", err)
	}
}
