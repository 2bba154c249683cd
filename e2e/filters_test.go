//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// nodeTools skips unless the test runs as root on the e2e node with the
// project's binaries (make e2e sets E2E_EFLATENCY next to them).
func nodeTools(t *testing.T, e *env) (bin, fabricNS string) {
	t.Helper()
	efl := os.Getenv("E2E_EFLATENCY")
	if !e.localNode || os.Geteuid() != 0 || efl == "" {
		t.Skip("SKIP: needs the local e2e cluster with its fabric netns, root and E2E_EFLATENCY (make e2e sets them)")
	}
	return strings.TrimSuffix(efl, "eflatency"), getenv("E2E_FABRIC_NS", "efvi-fabric")
}

// efvictlFilters lists the node's filters through the agent's diagnostics
// socket, as an operator would.
func efvictlFilters(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin+"efvictl", "filters", "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("efvictl filters: %v\n%s", err, out)
	}
	var v any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("efvictl filters is not JSON: %v\n%s", err, out)
	}
	return string(out)
}

// forwarded reads the root namespace's IPv4 ForwDatagrams counter.
func forwarded(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "Ip: ") || !strings.HasPrefix(lines[i+1], "Ip: ") {
			continue
		}
		names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, n := range names {
			if n == "ForwDatagrams" && j < len(vals) {
				v, err := strconv.ParseInt(vals[j], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatal("no Ip ForwDatagrams in /proc/net/snmp")
	return 0
}

// sendFromFabric sends n UDP datagrams from the fabric netns to dst.
func sendFromFabric(t *testing.T, fabricNS, dst string, n int) {
	t.Helper()
	script := fmt.Sprintf("for i in $(seq 1 %d); do echo x; done", n)
	// busybox-free: the host's bash /dev/udp sends one datagram per write.
	host, port, _ := net.SplitHostPort(dst)
	cmd := exec.Command("ip", "netns", "exec", fabricNS, "bash", "-c",
		fmt.Sprintf("exec 3>/dev/udp/%s/%s; %s | while read l; do echo -n \"$l\" >&3; done", host, port, script))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("send from the fabric to %s: %v\n%s", dst, err, out)
	}
}

// TestPodDeletionRemovesFilters: the filters the CNI installed for a pod's
// declaration steal its flow; when the pod is deleted they go, and the same
// traffic reaches the node's kernel again.
func TestPodDeletionRemovesFilters(t *testing.T) {
	e := setup(t)
	bin, fabric := nodeTools(t, e)
	p := e.viPod("declared", 1)
	p.Annotations = map[string]string{"efvi.io/filters": "udp:9090"}
	e.create(t, p)
	p = e.waitPod(t, "declared", "Running", 2*time.Minute, running)
	dst := net.JoinHostPort(p.Status.PodIP, "9090")
	if f := efvictlFilters(t, bin); !strings.Contains(f, p.Status.PodIP+":9090") {
		t.Fatalf("efvictl does not show the pod's declared filter udp:%s:\n%s", dst, f)
	}

	// Stolen: the datagrams go to the VI, not through the node's kernel.
	before := forwarded(t)
	sendFromFabric(t, fabric, dst, 50)
	if d := forwarded(t) - before; d >= 50 {
		t.Fatalf("the kernel forwarded %d of 50 datagrams the VI's filter should have stolen", d)
	}

	if err := e.cs.CoreV1().Pods(e.ns).Delete(context.Background(), "declared", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		return !strings.Contains(efvictlFilters(t, bin), p.Status.PodIP+":9090"), nil
	})
	if err != nil {
		t.Fatalf("the pod's filter is still installed 60s after the pod was deleted:\n%s", efvictlFilters(t, bin))
	}
	before = forwarded(t)
	sendFromFabric(t, fabric, dst, 50)
	if d := forwarded(t) - before; d < 50 {
		t.Fatalf("after the pod was deleted the kernel forwarded only %d of 50 datagrams: something still steals them", d)
	}
}

// TestFilterRefusedForAnotherPodsIP: a pod that declares a filter on an IP
// that is not its own is refused, and says why in a FilterRefused event.
func TestFilterRefusedForAnotherPodsIP(t *testing.T) {
	e := setup(t)
	if !strings.Contains(efvictlFiltersOrSkip(t), "[") {
		t.Skip("SKIP: efvictl unavailable")
	}
	p := e.viPod("thief", 1)
	p.Annotations = map[string]string{"efvi.io/filters": "udp:10.244.0.250:5000"}
	e.create(t, p)
	var ev corev1.Event
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := e.cs.CoreV1().Events(e.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=thief"})
		if err != nil {
			return false, nil
		}
		for _, x := range l.Items {
			if x.Reason == "FilterRefused" {
				ev = x
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatal("no FilterRefused event on a pod that declared another IP")
	}
	if !regexp.MustCompile(`10\.244\.0\.250`).MatchString(ev.Message) {
		t.Fatalf("FilterRefused does not name the refused address: %q", ev.Message)
	}
	t.Logf("FilterRefused: %s", ev.Message)
	got, err := e.cs.CoreV1().Pods(e.ns).Get(context.Background(), "thief", metav1.GetOptions{})
	if err == nil && running(got) {
		t.Fatal("the pod runs although its declared filter was refused")
	}
}

func efvictlFiltersOrSkip(t *testing.T) string {
	if os.Geteuid() != 0 || os.Getenv("E2E_EFLATENCY") == "" {
		t.Skip("SKIP: needs root on the e2e node (make e2e)")
	}
	out, err := exec.Command(strings.TrimSuffix(os.Getenv("E2E_EFLATENCY"), "eflatency")+"efvictl", "filters", "-o", "json").CombinedOutput()
	if err != nil {
		t.Skipf("SKIP: efvictl: %v", err)
	}
	return string(out)
}

// TestVIFlowsAcrossAgentRestart: a pod's VI keeps answering while the agent
// pod is deleted and replaced.
func TestVIFlowsAcrossAgentRestart(t *testing.T) {
	e := setup(t)
	bin, fabric := nodeTools(t, e)
	p := e.viPod("pong", 1)
	p.Spec.Containers[0].Command = []string{"/usr/bin/eflatency", "pong", "-port", "8080"}
	e.create(t, p)
	p = e.waitPod(t, "pong", "Running", 2*time.Minute, running)
	e.waitLog(t, "pong", regexp.MustCompile(`ready`), 30*time.Second)
	ping := func(when string) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", fabric, bin+"eflatency", "ping",
			"-dst", p.Status.PodIP+":8080", "-kernel", "-n", "500", "-w", "50").CombinedOutput()
		if err != nil {
			t.Fatalf("ping %s the agent restart: %v\n%s", when, err, out)
		}
	}
	ping("before")
	// While the agent is away and after the new one re-adopts the data
	// plane, the VI keeps answering.
	e.restartAgent(t, func() { ping("during") })
	ping("after")
}
