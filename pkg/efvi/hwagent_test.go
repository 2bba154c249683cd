package efvi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/hwvi"
)

// fakeNIC stands in for libciul on the agent side (no NIC here): its VI set
// hands out an fd of /dev/null as the driver handle.
type fakeNIC struct{ sets int }

func (n *fakeNIC) Version() (string, string) { return "test", "test" }

func (n *fakeNIC) Open(ifname string, ifindex, vis int) (hwvi.VISet, error) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	n.sets++
	return &fakeSet{f: f}, nil
}

type fakeSet struct{ f *os.File }

func (s *fakeSet) FD() int                                      { return int(s.f.Fd()) }
func (s *fakeSet) PDResID() uint32                              { return 3 }
func (s *fakeSet) VISetResID() uint32                           { return 4 }
func (s *fakeSet) AddFilter(hwvi.Filter) (hwvi.FilterID, error) { return hwvi.FilterID{}, nil }
func (s *fakeSet) RemoveFilter(hwvi.FilterID) error             { return nil }
func (s *fakeSet) Close() error                                 { return s.f.Close() }

// TestHardwareSDKAgentAllocation goes from the agent's hardware backend
// (pkg/hwvi: Prepare serves the allocation's cluster socket and returns the
// container's environment) to the SDK's DialAgent in that environment. The
// handshake must reach the agent; what follows depends on the build: an
// untagged SDK says the hardware backend is not built in, the onload-tagged
// one gets the PD through libciul and then reports the missing NIC.
func TestHardwareSDKAgentAllocation(t *testing.T) {
	nic := &fakeNIC{}
	b := hwvi.New(hwvi.Config{
		BrokerRoot:     t.TempDir(),
		NIC:            nic,
		DevFS:          fstest.MapFS{"dev/sfc_char": &fstest.MapFile{Mode: os.ModeDevice}},
		InterfaceIndex: func(string) (int, error) { return 7, nil },
	})
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := b.Prepare(ctx, deviceplugin.PrepareRequest{Pool: "nic", Resource: "efvi.io/nic", AllocationID: "a1", Devices: []string{"eth7-vi0"}})
	if err != nil {
		t.Fatalf("agent Prepare: %v", err)
	}
	defer b.Release(context.Background(), "nic", "a1")
	t.Setenv(EnvSocket, "")
	for k, v := range m.Env {
		// The container sees the allocation directory at ContainerPath; this
		// test runs on the host side of the mount.
		t.Setenv(k, strings.Replace(v, m.ContainerPath, m.HostPath, 1))
	}
	sel, err := SelectBackend(os.Getenv)
	if err != nil || sel.Kind != BackendHardware || sel.ClusterName != "nic" || filepath.Base(sel.ClusterSocket) != "cluster.sock" {
		t.Fatalf("the agent's environment %v selects %+v, %v; want the hardware backend on cluster nic", m.Env, sel, err)
	}
	d, err := DialAgent(ctx, "")
	if d != nil {
		d.Close()
		if _, statErr := os.Stat("/dev/sfc_char"); statErr != nil {
			t.Fatal("DialAgent succeeded without a NIC")
		}
		t.Skip("/dev/sfc_char exists here: a real NIC path; not what this test shows")
	}
	want := ErrHardwareNotBuilt
	if HardwareBuiltIn {
		want = errNoNICForTest
	}
	if !errors.Is(err, want) || !strings.Contains(err.Error(), "eth7") {
		t.Fatalf("DialAgent in the agent's environment: %v; want %v after a handshake that names port eth7", err, want)
	}
	t.Logf("SDK in the agent's environment: %v", err)
}
