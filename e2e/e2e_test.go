//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-efvi/kube-efvi/e2e/cluster"
)

// env is what every test needs: a client, the node, the pool's resource.
type env struct {
	cs        kubernetes.Interface
	node      string
	resource  corev1.ResourceName
	ns        string
	agentNS   string
	image     string
	localNode bool // the e2e/cluster harness runs this node (kubelet restarts possible)
	// fabricNS is the host's fabric netns (E2E_FABRIC_NS, default
	// efvi-fabric) when it exists here: routes reach the pods' IPs through
	// the nodes' ports. Empty on a cluster without the local fabric.
	fabricNS string
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// setup connects to the cluster or skips the test, and makes a fresh
// namespace for it.
func setup(t *testing.T) *env {
	t.Helper()
	kc := os.Getenv("KUBECONFIG")
	if kc == "" {
		t.Skip("SKIP e2e: KUBECONFIG is not set; bring a cluster up with `make e2e-up` and run `make e2e`")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Skipf("SKIP e2e: KUBECONFIG %s: %v", kc, err)
	}
	cfg.Timeout = 15 * time.Second
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.Discovery().ServerVersion(); err != nil {
		t.Skipf("SKIP e2e: no API server answers at KUBECONFIG %s (%v); run `make e2e-up`", kc, err)
	}
	e := &env{
		cs: cs, resource: corev1.ResourceName(getenv("E2E_RESOURCE", "efvi.io/efvi0")),
		agentNS: getenv("E2E_AGENT_NAMESPACE", "kube-efvi"), image: getenv("E2E_IMAGE", "localhost/kube-efvi/example-app:dev"),
	}
	e.node = os.Getenv("E2E_NODE")
	if e.node == "" {
		nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil || len(nodes.Items) == 0 {
			t.Fatalf("list nodes: %v (%d)", err, len(nodes.Items))
		}
		e.node = nodes.Items[0].Name
		for _, n := range nodes.Items { // the first node with the pool
			if q, ok := n.Status.Allocatable[e.resource]; ok && q.Value() > 0 {
				e.node = n.Name
				break
			}
		}
	}
	e.localNode = strings.HasPrefix(kc, getenv("E2E_WORK", cluster.DefaultWorkDir))
	if ns := getenv("E2E_FABRIC_NS", "efvi-fabric"); ns != "" {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			e.fabricNS = ns
		}
	}
	e.ns = fmt.Sprintf("efvi-e2e-%s-%d", strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-")), time.Now().UnixNano()%100000)
	if len(e.ns) > 63 {
		e.ns = e.ns[len(e.ns)-63:]
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.dump(t)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		_ = cs.CoreV1().Namespaces().Delete(ctx, e.ns, metav1.DeleteOptions{})
		// Wait, so the next test sees the VIs back.
		_ = wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
			_, err := cs.CoreV1().Namespaces().Get(ctx, e.ns, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	})
	// Every test starts from a node that advertises the pool.
	e.capacity(t)
	return e
}

// capacity waits until the node advertises the pool and returns the count.
func (e *env) capacity(t *testing.T) int64 {
	t.Helper()
	var n int64
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		node, err := e.cs.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		q, ok := node.Status.Allocatable[e.resource]
		n = q.Value()
		return ok && n > 0, nil
	})
	if err != nil {
		t.Fatalf("node %s does not advertise %s (allocatable %d) within 90s: is the agent running (kubectl -n %s get pods)?", e.node, e.resource, n, e.agentNS)
	}
	return n
}

// viPod is a pod requesting n VIs whose container reports its VI: it prints
// EFVI_SOCKET/EFVI_DEVICES, then every second whether the socket is there.
func (e *env) viPod(name string, n int64) *corev1.Pod {
	script := `echo "EFVI_SOCKET=$EFVI_SOCKET"; echo "EFVI_DEVICES=$EFVI_DEVICES"
while true; do if [ -S "$EFVI_SOCKET" ]; then s=SOCKET_OK; else s=SOCKET_MISSING; fi
  [ "$s" = "$last" ] || echo "$s $(date +%s)"; last=$s; sleep 1; done`
	uid := int64(65534)
	no := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: corev1.PodSpec{
			NodeName: "", // the scheduler places it: capacity is what is tested
			// ... on the node under test (E2E_NODE), in a cluster of any size.
			Affinity:                      onNode(e.node),
			AutomountServiceAccountToken:  &no,
			TerminationGracePeriodSeconds: ptr(int64(1)),
			Containers: []corev1.Container{{
				Name: "app", Image: e.image, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"/bin/sh", "-c", script},
				Resources: corev1.ResourceRequirements{
					Limits: corev1.ResourceList{e.resource: *resource.NewQuantity(n, resource.DecimalSI)},
				},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: &uid, RunAsGroup: &uid, AllowPrivilegeEscalation: &no,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// onNode is a required node affinity for the node named name (by
// metadata.name: the hostname label may differ on real clusters).
func onNode(name string) *corev1.Affinity {
	return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{name}}},
		}}},
	}}
}

// inUse sums the VIs that live pods on the node hold (allocatable does not
// go down as pods take VIs; the scheduler subtracts requests).
func (e *env) inUse(t *testing.T) int64 {
	t.Helper()
	pods, err := e.cs.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + e.node})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, c := range p.Spec.Containers {
			if q, ok := c.Resources.Limits[e.resource]; ok {
				n += q.Value()
			}
		}
	}
	return n
}

func (e *env) create(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if _, err := e.cs.CoreV1().Pods(e.ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
}

// waitPod waits for cond on the pod.
func (e *env) waitPod(t *testing.T, name, what string, timeout time.Duration, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := e.cs.CoreV1().Pods(e.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		phase := "unknown"
		if last != nil {
			phase = fmt.Sprintf("%s %+v", last.Status.Phase, last.Status.Conditions)
		}
		t.Fatalf("pod %s not %s within %s: %s", name, what, timeout, phase)
	}
	return last
}

func running(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.ContainerStatuses {
		if !c.Ready {
			return false
		}
	}
	return true
}

// logs reads the pod's log, retrying for a while (the kubelet serves logs,
// and tests restart it).
func (e *env) logs(t *testing.T, name string) string {
	t.Helper()
	var err error
	for i := 0; i < 60; i++ {
		var rc io.ReadCloser
		rc, err = e.cs.CoreV1().Pods(e.ns).GetLogs(name, &corev1.PodLogOptions{}).Stream(context.Background())
		if err == nil {
			b, rerr := io.ReadAll(rc)
			rc.Close()
			if rerr == nil {
				return string(b)
			}
			err = rerr
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("logs of %s: %v", name, err)
	return ""
}

// waitLog waits until the pod's log matches re.
func (e *env) waitLog(t *testing.T, name string, re *regexp.Regexp, timeout time.Duration) string {
	t.Helper()
	var out string
	deadline := time.Now().Add(timeout)
	for {
		out = e.logs(t, name)
		if re.MatchString(out) {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("log of %s does not match %q within %s:\n%s", name, re, timeout, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (e *env) dump(t *testing.T) {
	ctx := context.Background()
	pods, _ := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	for _, p := range pods.Items {
		if p.Namespace != e.ns && p.Namespace != e.agentNS {
			continue
		}
		t.Logf("pod %s/%s %s %+v", p.Namespace, p.Name, p.Status.Phase, p.Status.Conditions)
		for _, c := range p.Spec.Containers {
			rc, err := e.cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: c.Name, TailLines: ptr(int64(60))}).Stream(ctx)
			if err != nil {
				continue
			}
			var b bytes.Buffer
			_, _ = io.Copy(&b, rc)
			rc.Close()
			t.Logf("logs %s/%s[%s]:\n%s", p.Namespace, p.Name, c.Name, b.String())
		}
	}
	evs, _ := e.cs.CoreV1().Events(e.ns).List(ctx, metav1.ListOptions{})
	for _, ev := range evs.Items {
		t.Logf("event %s %s: %s", ev.InvolvedObject.Name, ev.Reason, ev.Message)
	}
}

var (
	socketRE  = regexp.MustCompile(`(?m)^EFVI_SOCKET=(/\S+/broker\.sock)$`)
	devicesRE = regexp.MustCompile(`(?m)^EFVI_DEVICES=(\S+)$`)
)

// TestNodeAdvertisesPool: the agent registered the pool with the kubelet,
// and the node's capacity shows it.
func TestNodeAdvertisesPool(t *testing.T) {
	e := setup(t)
	node, err := e.cs.CoreV1().Nodes().Get(context.Background(), e.node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, ok := node.Status.Capacity[e.resource]
	if !ok || c.Value() <= 0 {
		t.Fatalf("node %s capacity has no %s: %v", e.node, e.resource, node.Status.Capacity)
	}
	t.Logf("node %s: capacity %s=%d, allocatable %d", e.node, e.resource, c.Value(), node.Status.Allocatable.Name(e.resource, resource.DecimalSI).Value())
}

// TestPodGetsVI: a pod requesting one VI runs (unprivileged), with
// EFVI_SOCKET naming a socket that exists in the container and
// EFVI_DEVICES naming one VI of the pool's port.
func TestPodGetsVI(t *testing.T) {
	e := setup(t)
	e.create(t, e.viPod("vi", 1))
	e.waitPod(t, "vi", "Running", 2*time.Minute, running)
	out := e.waitLog(t, "vi", regexp.MustCompile(`SOCKET_(OK|MISSING)`), 30*time.Second)
	m := socketRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("EFVI_SOCKET not set to a broker socket path:\n%s", out)
	}
	d := devicesRE.FindStringSubmatch(out)
	if d == nil || strings.Contains(d[1], ",") {
		t.Fatalf("EFVI_DEVICES does not name exactly one VI:\n%s", out)
	}
	if !regexp.MustCompile(`^[a-z0-9]+-vi[0-9]+$`).MatchString(d[1]) && !regexp.MustCompile(`^[0-9]+$`).MatchString(d[1]) {
		t.Logf("note: EFVI_DEVICES=%q has an unexpected form", d[1])
	}
	if !strings.Contains(out, "SOCKET_OK") {
		t.Fatalf("the broker socket %s is not present in the container:\n%s", m[1], out)
	}
	t.Logf("pod got EFVI_SOCKET=%s EFVI_DEVICES=%s", m[1], d[1])
}

// TestOutOfCapacityPending: with every VI taken, a pod asking for one more
// stays Pending (Insufficient <resource>), and runs once a VI is freed.
func TestOutOfCapacityPending(t *testing.T) {
	e := setup(t)
	n := e.capacity(t) - e.inUse(t)
	if n <= 0 {
		t.Fatalf("no free %s on %s to start from: other pods hold them all", e.resource, e.node)
	}
	e.create(t, e.viPod("all", n))
	e.waitPod(t, "all", "Running", 2*time.Minute, running)
	e.create(t, e.viPod("extra", 1))
	p := e.waitPod(t, "extra", "Unschedulable", time.Minute, func(p *corev1.Pod) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				return true
			}
		}
		return false
	})
	if p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
		t.Fatalf("extra pod: phase %s node %q, want Pending and unscheduled", p.Status.Phase, p.Spec.NodeName)
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && !strings.Contains(c.Message, "Insufficient "+string(e.resource)) {
			t.Fatalf("unschedulable for another reason: %s", c.Message)
		}
	}
	// Stays Pending while the VIs are held.
	time.Sleep(3 * time.Second)
	if p, _ := e.cs.CoreV1().Pods(e.ns).Get(context.Background(), "extra", metav1.GetOptions{}); p.Spec.NodeName != "" {
		t.Fatal("extra pod was scheduled although every VI is allocated")
	}
	if err := e.cs.CoreV1().Pods(e.ns).Delete(context.Background(), "all", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitPod(t, "extra", "Running after the VIs were freed", 3*time.Minute, running)
}

// TestAgentRestartKeepsPod: deleting the agent pod (the DaemonSet makes a
// new one) leaves a running VI pod undisturbed, its socket in place, and
// the node advertises the pool again.
func TestAgentRestartKeepsPod(t *testing.T) {
	e := setup(t)
	e.create(t, e.viPod("vi", 1))
	before := e.waitPod(t, "vi", "Running", 2*time.Minute, running)
	e.waitLog(t, "vi", regexp.MustCompile(`SOCKET_OK`), 30*time.Second)
	e.restartAgent(t, nil)
	e.capacity(t)
	time.Sleep(2 * time.Second)
	after := e.waitPod(t, "vi", "Running", 10*time.Second, running)
	if after.Status.ContainerStatuses[0].RestartCount != before.Status.ContainerStatuses[0].RestartCount {
		t.Fatal("the VI pod's container restarted with the agent")
	}
	// The socket must be back; a gap while the agent restarts is reported
	// (today the agent removes the socket on exit and re-creates it: a pod
	// that dials during the restart fails; VIs it already holds keep working).
	out := e.waitLog(t, "vi", regexp.MustCompile(`SOCKET_OK \d+\s*$`), 30*time.Second)
	if strings.Contains(out, "SOCKET_MISSING") {
		t.Logf("note: the broker socket was absent for a moment during the agent restart:\n%s", out)
	}
}

// TestKubeletRestart: restarting the kubelet re-advertises the pool and
// leaves running VI pods undisturbed. Needs the local e2e cluster.
func TestKubeletRestart(t *testing.T) {
	e := setup(t)
	if !e.localNode || os.Geteuid() != 0 {
		t.Skip("SKIP: restarting the kubelet needs the local e2e cluster (make e2e-up) and root")
	}
	e.create(t, e.viPod("vi", 1))
	before := e.waitPod(t, "vi", "Running", 2*time.Minute, running)
	e.waitLog(t, "vi", regexp.MustCompile(`SOCKET_OK`), 30*time.Second)
	c, err := cluster.New(cluster.Options{WorkDir: getenv("E2E_WORK", cluster.DefaultWorkDir), NodeName: e.node})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.StopKubelet(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartKubelet(ctx); err != nil {
		t.Fatalf("kubelet did not come back: %v", err)
	}
	// The kubelet forgets device plugins when it restarts; the agent must
	// re-register for the node to show the pool again.
	e.capacity(t)
	after := e.waitPod(t, "vi", "Running", 30*time.Second, running)
	if after.UID != before.UID || after.Status.ContainerStatuses[0].RestartCount != before.Status.ContainerStatuses[0].RestartCount {
		t.Fatal("the VI pod was restarted by the kubelet restart")
	}
	if out := e.logs(t, "vi"); strings.Contains(out, "SOCKET_MISSING") {
		t.Fatalf("the VI pod lost its socket during the kubelet restart:\n%s", out)
	}
	// Admission of a new VI pod needs the restarted kubelet to Allocate
	// through the agent's re-registered plugin.
	e.create(t, e.viPod("vi2", 1))
	e.waitPod(t, "vi2", "Running after the kubelet restart", 2*time.Minute, running)
	e.waitLog(t, "vi2", regexp.MustCompile(`SOCKET_OK`), 30*time.Second)
}

// TestVIPingPong: a pod runs eflatency pong on its VI (filter
// udp:<pod IP>:8080 through the agent); a kernel UDP pinger in the fabric
// namespace sends to the pod IP through the node port. Every round trip goes
// fabric -> port XDP -> the pod's VI -> the pod's TX on the VI -> port ->
// fabric, so the table only appears if both directions work. Needs the local
// e2e cluster (the fabric netns on this host), root and E2E_EFLATENCY.
func TestVIPingPong(t *testing.T) {
	e := setup(t)
	efl := os.Getenv("E2E_EFLATENCY")
	if e.fabricNS == "" || os.Geteuid() != 0 || efl == "" {
		t.Skip("SKIP: needs the local fabric netns on this host (make e2e-up or make kind-up), root and E2E_EFLATENCY (make e2e / make kind-e2e set them)")
	}
	p := e.viPod("pong", 1)
	p.Spec.Containers[0].Command = []string{"/usr/bin/eflatency", "pong", "-port", "8080"}
	e.create(t, p)
	p = e.waitPod(t, "pong", "Running", 2*time.Minute, running)
	e.waitLog(t, "pong", regexp.MustCompile(`ready`), 30*time.Second)
	// A broken path leaves the pinger waiting for replies: bound it.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", e.fabricNS, efl, "ping",
		"-dst", p.Status.PodIP+":8080", "-kernel", "-n", "2000", "-w", "200").CombinedOutput()
	if err != nil {
		t.Fatalf("ping from the fabric to %s:8080: %v\n%s\npong log:\n%s", p.Status.PodIP, err, out, e.logs(t, "pong"))
	}
	if !regexp.MustCompile(`(?m)^mean_us`).Match(out) || !regexp.MustCompile(`(?m)^[0-9.]+\t[0-9.]+\t`).Match(out) {
		t.Fatalf("no RTT table from the pinger:\n%s", out)
	}
	t.Logf("fabric -> VI -> fabric, kernel UDP pinger:\n%s", out)
}

// TestChartCNIInstallLifecycle (runs last: it upgrades the release): with
// cni.install the init container appends efvi-cni to the node's conflist and
// copies the binary; deleting the agent pod keeps both (preStop sees the
// DaemonSet); `helm uninstall` removes both, restoring the conflist byte for
// byte; the release is then reinstalled as it was. The agent pod is
// hostNetwork, so no CNI ADD runs while the entry is in place. Needs the
// local e2e cluster (it reads the node's files) and helm (E2E_HELM).
func TestChartCNIInstallLifecycle(t *testing.T) {
	e := setup(t)
	helm := os.Getenv("E2E_HELM")
	values := os.Getenv("E2E_VALUES")
	if !e.localNode || helm == "" || values == "" {
		t.Skip("SKIP: needs the local e2e cluster and E2E_HELM/E2E_VALUES (make e2e sets them)")
	}
	const conf, bin = "/etc/cni/net.d/" + cluster.ConflistName, "/opt/cni/bin/efvi-cni"
	orig, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	had := bytes.Contains(orig, []byte(`"efvi-cni"`))
	chart := getenv("E2E_CHART", "../charts/kube-efvi")
	h := func(args ...string) {
		t.Helper()
		out, err := execOut(helm, args...)
		if err != nil {
			t.Fatalf("helm %v: %v\n%s", args, err, out)
		}
	}
	reinstall := func() {
		set := "cni.install=false"
		if had {
			set = "cni.install=true"
		}
		_, _ = execOut(helm, "upgrade", "--install", "kube-efvi", chart, "-n", e.agentNS, "--create-namespace", "-f", values, "--set", set, "--wait", "--timeout", "2m")
		e.capacity(t)
	}
	t.Cleanup(reinstall)
	h("upgrade", "--install", "kube-efvi", chart, "-n", e.agentNS, "--create-namespace", "-f", values, "--set", "cni.install=true", "--wait", "--timeout", "2m")
	waitFile := func(what string, cond func() bool) {
		t.Helper()
		if err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 90*time.Second, true, func(context.Context) (bool, error) { return cond(), nil }); err != nil {
			t.Fatalf("%s: not within 90s", what)
		}
	}
	installed := func() bool {
		b, err := os.ReadFile(conf)
		_, berr := os.Stat(bin)
		return err == nil && berr == nil && bytes.Count(b, []byte(`"efvi-cni"`)) == 1
	}
	waitFile("efvi-cni appended to "+conf+" and copied to "+bin, installed)
	e.capacity(t)
	// Agent restart: the preStop keeps the plugin.
	ctx := context.Background()
	if err := e.cs.CoreV1().Pods(e.agentNS).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := e.cs.CoreV1().Pods(e.agentNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		return err == nil && len(l.Items) == 1 && l.Items[0].DeletionTimestamp == nil && running(&l.Items[0]), nil
	}); err != nil {
		t.Fatal("agent pod not replaced")
	}
	if !installed() {
		t.Fatal("an agent restart removed the CNI plugin")
	}
	// Release deletion: the preStop removes it, restoring the file exactly.
	h("uninstall", "kube-efvi", "-n", e.agentNS, "--wait", "--timeout", "2m")
	waitFile("conflist restored and binary removed after helm uninstall", func() bool {
		b, err := os.ReadFile(conf)
		_, berr := os.Stat(bin)
		want := orig
		if had { // the suite started with the entry: compare without it
			return err == nil && !bytes.Contains(b, []byte(`"efvi-cni"`)) && os.IsNotExist(berr)
		}
		return err == nil && bytes.Equal(b, want) && os.IsNotExist(berr)
	})
}

func execOut(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// restartAgent deletes the agent pod of the node under test, runs during
// (if set) right after the delete, and waits for a new agent pod there to
// be Running.
func (e *env) restartAgent(t *testing.T, during func()) {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + e.node}
	agents, err := e.cs.CoreV1().Pods(e.agentNS).List(ctx, sel)
	if err != nil || len(agents.Items) == 0 {
		t.Fatalf("no agent pod in %s: %v", e.agentNS, err)
	}
	old := agents.Items[0]
	if err := e.cs.CoreV1().Pods(e.agentNS).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if during != nil {
		during()
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.cs.CoreV1().Pods(e.agentNS).List(ctx, sel)
		if err != nil {
			return false, nil
		}
		for _, p := range l.Items {
			if p.UID != old.UID && running(&p) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no new agent pod Running after deleting %s", old.Name)
	}
}
