package hwvi_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
	"github.com/kube-efvi/kube-efvi/pkg/agent"
	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/envvar"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/kubelettest"
	"github.com/kube-efvi/kube-efvi/pkg/discovery/sysfstest"
	"github.com/kube-efvi/kube-efvi/pkg/hwvi"
	"github.com/kube-efvi/kube-efvi/pkg/softvi"
)

// fakeNIC stands in for libciul: it records what the agent allocates and
// hands out an fd of /dev/null as the "driver handle".
type fakeNIC struct {
	mu     sync.Mutex
	opened []string // "<ifname>/<ifindex>/<vis>"
	closed int
}

func (f *fakeNIC) Version() (string, string) { return "test-release", "test-intf" }

func (f *fakeNIC) Open(ifname string, ifindex, vis int) (hwvi.VISet, error) {
	fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.opened = append(f.opened, fmt.Sprintf("%s/%d/%d", ifname, ifindex, vis))
	f.mu.Unlock()
	return &fakeSet{nic: f, fd: fd}, nil
}

type fakeSet struct {
	nic *fakeNIC
	fd  int
}

func (s *fakeSet) FD() int                                      { return s.fd }
func (s *fakeSet) PDResID() uint32                              { return 7 }
func (s *fakeSet) VISetResID() uint32                           { return 9 }
func (s *fakeSet) AddFilter(hwvi.Filter) (hwvi.FilterID, error) { return hwvi.FilterID{}, nil }
func (s *fakeSet) RemoveFilter(hwvi.FilterID) error             { return nil }
func (s *fakeSet) Close() error {
	s.nic.mu.Lock()
	s.nic.closed++
	s.nic.mu.Unlock()
	return unix.Close(s.fd)
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is an agent wired as cmd/device-plugin wires it: the real software
// backend (XDP data plane) and the hardware backend, on real veths whose
// fake sysfs says which driver they have.
type node struct {
	k       *kubelettest.Kubelet
	logs    *syncBuf
	sw      *softvi.Backend
	root    string
	regs    map[string]string // resource -> endpoint
	metrics string            // address
}

func startNode(t *testing.T, ports []sysfstest.Port, pools string, nic hwvi.NIC, devFS fstest.MapFS) *node {
	t.Helper()
	root := kubelettest.TempDir(t)
	pluginDir := filepath.Join(root, "dp")
	if err := os.Mkdir(pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := &node{k: kubelettest.Start(t, pluginDir), logs: &syncBuf{}, root: root, regs: map[string]string{}}
	tree := sysfstest.New(t)
	for _, p := range ports {
		tree.Add(p)
	}
	cfgPath := filepath.Join(root, "config.yaml")
	body := "agent:\n  pluginDir: " + pluginDir + "\n  stateDir: " + filepath.Join(root, "state") +
		"\n  brokerDir: " + filepath.Join(root, "run") + "\n  metricsAddress: \"127.0.0.1:0\"\npools:\n" + pools
	if err := os.WriteFile(cfgPath, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(n.logs, nil))
	bpf := filepath.Join(dataplane.DefaultBPFFS, "efvt-hw-"+filepath.Base(root))
	allocRoot := filepath.Join(root, "run", "alloc")
	n.sw = softvi.New(softvi.Config{BPFRoot: bpf, BrokerRoot: allocRoot, StateDir: filepath.Join(root, "state", "ports"), Logger: log})
	hw := hwvi.New(hwvi.Config{BrokerRoot: allocRoot, NIC: nic, NotBuilt: "built without the onload build tag (test)", DevFS: devFS, Logger: log})
	a := agent.New(agent.Options{ConfigPath: cfgPath, SysfsRoot: tree.Root, DevFS: devFS, Events: sysfstest.NewEvents(),
		PodResources: agentPR{}, Logger: log,
		Backends: map[config.Backend]agent.Backend{config.Software: n.sw, config.Hardware: hw}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
		hw.Close()
		n.sw.Close()
		for _, p := range ports {
			if pl, err := dataplane.Open(context.Background(), dataplane.PortConfig{Ifname: p.Name, PinDir: filepath.Join(bpf, p.Name), VethPrefix: "x"}); err == nil {
				pl.Destroy()
			}
		}
		os.RemoveAll(bpf)
	})
	n.metrics = a.MetricsAddr(ctx)
	return n
}

type agentPR struct{}

func (agentPR) List(context.Context) ([]allocator.Held, error) { return nil, nil }

func (n *node) waitRegistrations(t *testing.T, count int) {
	t.Helper()
	for range count {
		r := n.k.WaitRegistration()
		n.regs[r.Req.ResourceName] = r.Req.Endpoint
	}
}

// devices returns the first non-empty ListAndWatch answer of a resource
// (ports are discovered in the background).
func (n *node) devices(t *testing.T, ctx context.Context, resource string) map[string]string {
	t.Helper()
	s, err := n.k.Client(n.regs[resource]).ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("%v\n%s", err, n.logs.String())
		}
		if len(r.Devices) == 0 {
			continue
		}
		m := map[string]string{}
		for _, d := range r.Devices {
			m[d.ID] = d.Health
		}
		return m
	}
}

func xdpAttached(t *testing.T, name string) bool {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	x := l.Attrs().Xdp
	return x != nil && (x.Attached || x.ProgId != 0)
}

// TestHardwarePoolGetsNoXDP: a hardware pool's port (a real veth, which the
// fake sysfs says is driven by sfc) never gets the XDP data plane, even
// after an Allocate; its allocation is served by the hardware backend (the
// ef_vi cluster socket), and a software pool's port on the same node does
// get XDP (so the check can see one).
func TestHardwarePoolGetsNoXDP(t *testing.T) {
	testnet.RequireRoot(t)
	hwPort, swPort := testnet.VethPair(t, nil, nil)
	nic := &fakeNIC{}
	n := startNode(t, []sysfstest.Port{
		{Name: hwPort.Name, Index: hwPort.Index, MAC: "00:0f:53:00:00:01", Driver: "sfc", PCIAddress: "0000:3b:00.0", Up: true},
		{Name: swPort.Name, Index: swPort.Index, MAC: "02:00:00:00:00:02", Driver: "veth", PCIAddress: "", Up: true},
	}, "- name: nic\n  backend: hardware\n  visPerPort: 2\n- name: fast\n  backend: software\n  selector: {interfaces: ["+swPort.Name+"]}\n  visPerPort: 1\n",
		nic, fstest.MapFS{"dev/sfc_char": &fstest.MapFile{}})
	n.waitRegistrations(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got := n.devices(t, ctx, "efvi.io/nic"); got[hwPort.Name+"-vi0"] != "Healthy" || len(got) != 2 {
		t.Fatalf("hardware pool devices %v", got)
	}
	resp, err := n.k.Client(n.regs["efvi.io/nic"]).Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{hwPort.Name + "-vi1"}}}})
	if err != nil {
		t.Fatalf("Allocate on the hardware pool: %v", err)
	}
	cr := resp.ContainerResponses[0]
	if cr.Envs[envvar.ClusterSocket] != "/run/efvi/nic/cluster.sock" || cr.Envs[envvar.ClusterName] != "nic" {
		t.Fatalf("container env %v: want %s and %s", cr.Envs, envvar.ClusterSocket, envvar.ClusterName)
	}
	if len(cr.Devices) == 0 || cr.Devices[0].HostPath != "/dev/sfc_char" {
		t.Fatalf("devices %v: want /dev/sfc_char", cr.Devices)
	}
	nic.mu.Lock()
	opened := strings.Join(nic.opened, ",")
	nic.mu.Unlock()
	if opened != fmt.Sprintf("%s/%d/1", hwPort.Name, hwPort.Index) {
		t.Fatalf("NIC opened %q, want one PD + 1-VI set on %s (ifindex %d)", opened, hwPort.Name, hwPort.Index)
	}
	// The allocation's cluster socket answers libciul's handshake with the fd.
	sock := filepath.Join(cr.Mounts[0].HostPath, envvar.ClusterSocketName)
	if reply, fd := handshake(t, sock, "nic"); reply != fmt.Sprintf("3 0 7 9 %s\n", hwPort.Name) || fd < 0 {
		t.Fatalf("cluster reply %q fd %d", reply, fd)
	} else {
		unix.Close(fd)
	}
	// Wait until the software pool's port has its data plane (OnPoolPorts
	// runs in the background), then check both ports.
	for !xdpAttached(t, swPort.Name) {
		if ctx.Err() != nil {
			t.Fatalf("software pool port %s never got its XDP program: the check cannot see one", swPort.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if xdpAttached(t, hwPort.Name) {
		t.Fatalf("XDP program attached to hardware pool port %s", hwPort.Name)
	}
	if _, ok := n.sw.Registry().Port(hwPort.Name); ok {
		t.Fatalf("software backend opened hardware port %s", hwPort.Name)
	}
	for _, l := range strings.Split(n.logs.String(), "\n") {
		if strings.Contains(l, "component=softvi") && strings.Contains(l, "port="+hwPort.Name+" ") {
			t.Fatalf("software backend touched %s: %s", hwPort.Name, l)
		}
	}
}

// TestHardwarePoolUnavailable: a hardware pool on an agent without the
// hardware backend (built without the onload tag), or without
// /dev/sfc_char, advertises Unhealthy slots, refuses Allocate, and its log
// and metrics say why and what to install.
func TestHardwarePoolUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		nic     hwvi.NIC
		devFS   fstest.MapFS
		reason  string
		refusal string // in Allocate's error
	}{
		{"not built", nil, fstest.MapFS{"dev/sfc_char": &fstest.MapFile{}}, "built without the onload build tag", "built without the onload build tag"},
		{"no sfc_char", &fakeNIC{}, fstest.MapFS{}, "load Onload's sfc_char driver", "/dev/sfc_char not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startNode(t, []sysfstest.Port{{Name: "sfc0", Index: 3, MAC: "00:0f:53:00:00:01", Driver: "sfc", PCIAddress: "0000:3b:00.0", Up: true}},
				"- name: nic\n  backend: hardware\n  visPerPort: 2\n", tc.nic, tc.devFS)
			n.waitRegistrations(t, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if got := n.devices(t, ctx, "efvi.io/nic"); len(got) != 2 || got["sfc0-vi0"] != "Unhealthy" || got["sfc0-vi1"] != "Unhealthy" {
				t.Fatalf("devices %v: want 2 Unhealthy\n%s", got, n.logs.String())
			}
			_, err := n.k.Client(n.regs["efvi.io/nic"]).Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"sfc0-vi0"}}}})
			if err == nil || !strings.Contains(err.Error(), tc.refusal) {
				t.Fatalf("Allocate: %v, want a refusal saying %q", err, tc.refusal)
			}
			if !strings.Contains(n.logs.String(), tc.reason) {
				t.Fatalf("log does not say %q:\n%s", tc.reason, n.logs.String())
			}
			resp, err := http.Get("http://" + n.metrics + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var line string
			for _, l := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(l, "efvi_pool_unavailable{") {
					line = l
				}
			}
			if !strings.Contains(line, `pool="nic"`) || !strings.Contains(line, tc.reason) || !strings.HasSuffix(line, " 1") {
				t.Fatalf("metric efvi_pool_unavailable %q, want pool nic with reason %q", line, tc.reason)
			}
		})
	}
}

// handshake speaks libciul's side of the cluster protocol once.
func handshake(t *testing.T, sock, cluster string) (string, int) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 128)
	if _, err := c.Write([]byte("0 1\n")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf[:16]); err != nil || string(buf[:n]) != "1 0\n" {
		t.Fatalf("version reply %q %v", buf[:n], err)
	}
	if _, err := c.Write([]byte("2 " + cluster + " 0\n")); err != nil {
		t.Fatal(err)
	}
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if msgs, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(msgs) == 1 {
		if fds, _ := unix.ParseUnixRights(&msgs[0]); len(fds) == 1 {
			fd = fds[0]
		}
	}
	return string(buf[:n]), fd
}
