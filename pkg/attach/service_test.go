package attach

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stypes "k8s.io/apimachinery/pkg/types"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

type noDevices struct{}

func (noDevices) List(context.Context, *podresourcesv1.ListPodResourcesRequest, ...grpc.CallOption) (*podresourcesv1.ListPodResourcesResponse, error) {
	return &podresourcesv1.ListPodResourcesResponse{}, nil
}

type pods map[string]*corev1.Pod

func (p pods) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	if v, ok := p[ns+"/"+name]; ok {
		return v, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
}

func mkPod(name, uid string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: k8stypes.UID(uid)}, Status: corev1.PodStatus{Phase: phase}}
}

// TestReconcileRemovesOnlyGonePods: records of deleted, re-created and
// finished pods go; live and fresh ones stay; the state survives a restart.
func TestReconcileRemovesOnlyGonePods(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	state := filepath.Join(t.TempDir(), "state.json")
	api := pods{
		"ns/live": mkPod("live", "u1", corev1.PodRunning), "ns/recreated": mkPod("recreated", "u-new", corev1.PodRunning),
		"ns/done": mkPod("done", "u3", corev1.PodFailed), "ns/fresh-missing": nil,
	}
	delete(api, "ns/fresh-missing")
	cfg := Config{Registry: viservice.NewRegistry(), Devices: noDevices{}, Pods: api, StatePath: state, Now: func() time.Time { return now }}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := now.Add(-time.Hour)
	for _, r := range []*Record{
		{Key: "c1/eth0", PodNamespace: "ns", PodName: "live", PodUID: "u1", Created: old},
		{Key: "c2/eth0", PodNamespace: "ns", PodName: "recreated", PodUID: "u-old", Created: old},
		{Key: "c3/eth0", PodNamespace: "ns", PodName: "done", PodUID: "u3", Created: old},
		{Key: "c4/eth0", PodNamespace: "ns", PodName: "deleted", PodUID: "u4", Created: old},
		{Key: "c5/eth0", PodNamespace: "ns", PodName: "fresh-missing", PodUID: "u5", Created: now.Add(-time.Second)},
	} {
		s.records[r.Key] = r
	}
	if err := saveState(state, s.records); err != nil {
		t.Fatal(err)
	}
	// A restarted agent reads the records back.
	s, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.PodUIDs("ns", "recreated"); !slices.Equal(got, []string{"u-old"}) {
		t.Fatalf("PodUIDs %v", got)
	}
	removed, err := s.Sweep(context.Background(), []PodRef{{"ns", "live", "u1"}, {"ns", "recreated", "u-new"}})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{"c2/eth0", "c3/eth0", "c4/eth0"}; !slices.Equal(removed, want) {
		t.Fatalf("sweep removed %v, want %v", removed, want)
	}
	var keys []string
	for _, r := range s.Records() {
		keys = append(keys, r.Key)
	}
	if want := []string{"c1/eth0", "c5/eth0"}; !slices.Equal(keys, want) {
		t.Fatalf("left %v, want %v (live, and fresh within the grace)", keys, want)
	}
	// Past the grace, ReconcilePod confirms with the API server and removes it.
	now = now.Add(2 * SweepGrace)
	if removed, err := s.ReconcilePod(context.Background(), "ns", "fresh-missing"); err != nil || !slices.Equal(removed, []string{"c5/eth0"}) {
		t.Fatalf("ReconcilePod: %v, %v", removed, err)
	}
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r := s2.Records(); len(r) != 1 || r[0].Key != "c1/eth0" {
		t.Fatalf("persisted records %+v", r)
	}
}

func TestAddWithoutDevicesDoesNothing(t *testing.T) {
	s, err := New(Config{Registry: viservice.NewRegistry(), Devices: noDevices{}, Pods: pods{}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.Add(context.Background(), &cniapi.Attachment{ContainerID: "c", IfName: "eth0", PodNamespace: "ns", PodName: "p",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}})
	if err != nil || len(resp.Devices) != 0 || len(s.Records()) != 0 {
		t.Fatalf("ADD of a pod without VIs: %+v, %v, records %v", resp, err, s.Records())
	}
	st, _ := s.Status(context.Background(), &cniapi.StatusRequest{})
	if st.Ready || !strings.Contains(st.Reason, "no VI port") {
		t.Fatalf("status with no port: %+v", st)
	}
}

func TestCorruptStateIsAClearError(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	if err := saveState(p, map[string]*Record{}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"{", `{"version":9,"records":{}}`, `{"version":1,"records":{"a":{"key":"b"}}}`} {
		if err := writeRaw(p, bad); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Config{Registry: viservice.NewRegistry(), Devices: noDevices{}, Pods: pods{}, StatePath: p}); err == nil {
			t.Errorf("state %q accepted", bad)
		}
	}
}

func TestParseDeclarationDualStack(t *testing.T) {
	ips := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	specs, err := cniapi.ParseDeclaration("annotation", "udp:5000; udp:10.0.0.1:6000 sniff", ips)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range specs {
		got = append(got, s.String())
	}
	want := []string{"udp:10.0.0.1:5000", "udp:10.0.0.1:6000", "sniff:promisc", "udp:[fd00::1]:5000"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if _, err := cniapi.ParseDeclaration("annotation", "udp:5000", nil); err == nil || !strings.Contains(err.Error(), "needs its host") {
		t.Fatalf("host-less spec without pod IPs: %v", err)
	}
}
