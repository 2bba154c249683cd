//go:build e2e && soak

package e2e

// Soak tests (make soak; counts from the environment, CI runs small ones):
//
//	SOAK_AGENT_RESTARTS  agent restarts while VI pods run (default 2)
//	SOAK_CHURN_PODS      VI pods created and deleted in parallel per round (default 4, capped by capacity)
//	SOAK_CHURN_ROUNDS    churn rounds (default 2)
//	SOAK_AGENT_DOWN      how long the agent stays down (default 30s)

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

func soakCount(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive count", name, v)
	}
	return n
}

// nodeCounts counts what VI pods leave on the node: veths of ours, broker
// allocation directories, CNI attachment records.
type nodeCounts struct{ veths, allocDirs, records int }

func countNode(t *testing.T) nodeCounts {
	t.Helper()
	var c nodeCounts
	out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.SplitN(l, ": ", 3); len(f) > 1 && strings.HasPrefix(f[1], "efv") {
			c.veths++
		}
	}
	dirs, _ := filepath.Glob("/run/efvi/alloc/*/*")
	c.allocDirs = len(dirs)
	if b, err := os.ReadFile("/var/lib/efvi/cni-attachments.json"); err == nil {
		c.records = strings.Count(string(b), `"key"`)
	}
	return c
}

// TestSoakPodChurn creates and deletes VI pods with filters in parallel,
// and counts what is left: filters, veths, allocations, records, sockets.
func TestSoakPodChurn(t *testing.T) {
	e := setup(t)
	bin, _ := nodeTools(t, e)
	rounds := soakCount(t, "SOAK_CHURN_ROUNDS", 2)
	n := soakCount(t, "SOAK_CHURN_PODS", 4)
	if free := e.capacity(t) - e.inUse(t); int64(n) > free {
		n = int(free)
	}
	if n < 1 {
		t.Skip("SKIP: no free VI")
	}
	base, baseUse := countNode(t), e.inUse(t)
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		ips := make([]string, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				p := e.viPod(fmt.Sprintf("churn-%d-%d", r, i), 1)
				p.Annotations = map[string]string{"efvi.io/filters": fmt.Sprintf("udp:%d", 7000+i)}
				e.create(t, p)
				ips[i] = e.waitPod(t, p.Name, "Running", 3*time.Minute, running).Status.PodIP
			}(i)
		}
		wg.Wait()
		during := countNode(t)
		for i := 0; i < n; i++ {
			if err := e.cs.CoreV1().Pods(e.ns).Delete(context.Background(), fmt.Sprintf("churn-%d-%d", r, i), metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var left nodeCounts
		leftFilters := 0
		err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
			f := efvictlFilters(t, bin)
			leftFilters = 0
			for _, ip := range ips {
				leftFilters += strings.Count(f, ip+":")
			}
			left = countNode(t)
			return leftFilters == 0 && left.allocDirs == base.allocDirs && left.records == base.records && e.inUse(t) == baseUse, nil
		})
		t.Logf("SOAK churn round %d/%d, %d pods: during %+v; after delete: %d filters of theirs left, veths %d (base %d), alloc dirs %d (base %d), records %d (base %d), VIs in use %d (base %d)",
			r+1, rounds, n, during, leftFilters, left.veths, base.veths, left.allocDirs, base.allocDirs, left.records, base.records, e.inUse(t), baseUse)
		if err != nil {
			t.Fatalf("round %d leaked (see the counts above)", r+1)
		}
		if left.veths > base.veths+n { // slot veths are kept warm by design; no more than one per slot
			t.Fatalf("round %d: %d veths, base %d", r+1, left.veths, base.veths)
		}
	}
}

// TestSoakAgentRestarts restarts the agent N times while a VI pod runs: its
// socket stays, the pod is never restarted, its filter survives.
func TestSoakAgentRestarts(t *testing.T) {
	e := setup(t)
	bin, _ := nodeTools(t, e)
	n := soakCount(t, "SOAK_AGENT_RESTARTS", 2)
	p := e.viPod("soak-restart", 1)
	p.Annotations = map[string]string{"efvi.io/filters": "udp:7100"}
	e.create(t, p)
	ip := e.waitPod(t, p.Name, "Running", 3*time.Minute, running).Status.PodIP
	for i := 0; i < n; i++ {
		e.restartAgent(t, nil)
		got := e.waitPod(t, p.Name, "Running", time.Minute, running)
		restarts := int32(0)
		for _, cs := range got.Status.ContainerStatuses {
			restarts += cs.RestartCount
		}
		f := efvictlFilters(t, bin)
		t.Logf("SOAK agent restart %d/%d: pod restarts %d, filter udp:%s:7100 present %v", i+1, n, restarts, ip, strings.Contains(f, ip+":7100"))
		if restarts != 0 || !strings.Contains(f, ip+":7100") {
			t.Fatalf("agent restart %d disrupted the VI pod (restarts %d) or lost its filter:\n%s", i+1, restarts, f)
		}
	}
	// The socket file is unlinked between the old agent and the new one
	// (the SDK's DialAgent retries across it): a figure, not a failure.
	t.Logf("SOAK agent restarts: the pod saw its socket missing %d times (1 s sampling)", strings.Count(e.logs(t, p.Name), "SOCKET_MISSING"))
}

// TestSoakAgentDown keeps the agent off the node for SOAK_AGENT_DOWN: a pod
// without VIs starts meanwhile, the node stays Ready, and a VI pod created
// meanwhile starts once the agent is back.
func TestSoakAgentDown(t *testing.T) {
	e := setup(t)
	down, err := time.ParseDuration(getenv("SOAK_AGENT_DOWN", "30s"))
	if err != nil {
		t.Fatalf("SOAK_AGENT_DOWN: %v", err)
	}
	ctx := context.Background()
	dss, err := e.cs.AppsV1().DaemonSets(e.agentNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
	if err != nil || len(dss.Items) != 1 {
		t.Fatalf("agent DaemonSet in %s: %v (%d found)", e.agentNS, err, len(dss.Items))
	}
	ds := dss.Items[0].Name
	patch := func(v string) {
		body := `{"spec":{"template":{"spec":{"nodeSelector":{"efvi.io/soak-agent-down":` + v + `}}}}}`
		if _, err := e.cs.AppsV1().DaemonSets(e.agentNS).Patch(ctx, ds, k8stypes.StrategicMergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
			t.Fatalf("patch DaemonSet %s: %v", ds, err)
		}
	}
	patch(`"nowhere"`)
	restored := false
	restore := func() {
		if !restored {
			restored = true
			patch("null")
		}
	}
	defer restore()
	start := time.Now()
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.cs.CoreV1().Pods(e.agentNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		return err == nil && len(l.Items) == 0, nil
	})
	if err != nil {
		t.Fatal("the agent pod did not go away")
	}
	plain := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "soak-plain", Namespace: e.ns},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr(int64(1)), Containers: []corev1.Container{{
			Name: "app", Image: e.image, ImagePullPolicy: corev1.PullIfNotPresent, Command: []string{"/bin/sh", "-c", "sleep 3600"}}}},
	}
	e.create(t, plain)
	e.waitPod(t, plain.Name, "Running with the agent down", 2*time.Minute, running)
	vi := e.viPod("soak-vi-after", 1)
	e.create(t, vi)
	for time.Since(start) < down {
		node, err := e.cs.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				t.Fatalf("node %s not Ready with the agent down: %s %s", e.node, c.Reason, c.Message)
			}
		}
		time.Sleep(2 * time.Second)
	}
	restore()
	e.waitPod(t, vi.Name, "Running after the agent is back", 3*time.Minute, running)
	t.Logf("SOAK agent down %v: plain pod Running while down, node Ready throughout, VI pod Running after", time.Since(start).Round(time.Second))
}
