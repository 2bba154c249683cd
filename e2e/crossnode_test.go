//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cross-node tests: they need two nodes advertising the pool (make kind-up
// makes a control plane and a worker, each with a port on one fabric). The
// node under test (E2E_NODE) is "A"; "B" is another node with the pool.

// peer returns an env for another node advertising the pool, or skips.
func (e *env) peer(t *testing.T) *env {
	t.Helper()
	nodes, err := e.cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var with []string
	for _, n := range nodes.Items {
		if q, ok := n.Status.Allocatable[e.resource]; ok && q.Value() > 0 {
			with = append(with, n.Name)
			if n.Name != e.node {
				b := *e
				b.node = n.Name
				return &b
			}
		}
	}
	t.Skipf("SKIP: needs a second node advertising %s (nodes with it: %v); make kind-up makes two", e.resource, with)
	return nil
}

// portMAC is the MAC of node's port, from E2E_PORT_MACS (NODE=MAC,...;
// make kind-e2e sets it; on hardware: each node's Solarflare port, or the
// next hop between them).
func portMAC(t *testing.T, node string) string {
	t.Helper()
	v := os.Getenv("E2E_PORT_MACS")
	for _, kv := range strings.Split(v, ",") {
		if n, mac, ok := strings.Cut(kv, "="); ok && n == node {
			return mac
		}
	}
	t.Skipf("SKIP: E2E_PORT_MACS (%q) has no MAC for node %s: the VI pinger needs its next hop's MAC (make kind-e2e sets it)", v, node)
	return ""
}

// agentPod is the agent pod on node.
func (e *env) agentPod(t *testing.T, node string) corev1.Pod {
	t.Helper()
	l, err := e.cs.CoreV1().Pods(e.agentNS).List(context.Background(), metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/component=agent", FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil || len(l.Items) != 1 {
		t.Fatalf("agent pod on %s: %v (%d pods)", node, err, len(l.Items))
	}
	return l.Items[0]
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, c := range p.Status.ContainerStatuses {
		n += c.RestartCount
	}
	return n
}

// TestCrossNodeVIPing: a VI pod on node A pings a VI pod on node B through
// the fabric: A's VI transmits on A's port, the fabric carries the frame to
// B's port, B's data plane steers it to the pong pod's VI, and the reply
// takes the way back to the pinger's VI. No kernel socket on either side.
func TestCrossNodeVIPing(t *testing.T) {
	a := setup(t)
	b := a.peer(t)
	mac := portMAC(t, b.node)
	pong := b.viPod("pong", 1)
	pong.Spec.Containers[0].Command = []string{"/usr/bin/eflatency", "pong", "-port", "8080"}
	b.create(t, pong)
	pong = b.waitPod(t, "pong", "Running on "+b.node, 2*time.Minute, running)
	b.waitLog(t, "pong", regexp.MustCompile(`ready`), 30*time.Second)
	ping := a.viPod("ping", 1)
	ping.Spec.RestartPolicy = corev1.RestartPolicyNever
	ping.Spec.Containers[0].Command = []string{"/usr/bin/eflatency", "ping", "-dst", pong.Status.PodIP + ":8080", "-dst-mac", mac, "-n", "2000", "-w", "200"}
	a.create(t, ping)
	p := a.waitPod(t, "ping", "finished on "+a.node, 3*time.Minute, func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	out := a.logs(t, "ping")
	if p.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("VI pinger on %s -> VI pong on %s (%s, next hop %s) failed:\n%s\npong log:\n%s", a.node, b.node, pong.Status.PodIP, mac, out, b.logs(t, "pong"))
	}
	if !regexp.MustCompile(`(?m)^mean_us`).MatchString(out) || !regexp.MustCompile(`(?m)^[0-9.]+\t[0-9.]+\t`).MatchString(out) {
		t.Fatalf("no RTT table from the VI pinger:\n%s", out)
	}
	if !strings.Contains(out, "VI pinger") {
		t.Fatalf("the pinger did not use a VI:\n%s", out)
	}
	t.Logf("VI on %s -> fabric -> VI on %s:\n%s", a.node, b.node, out)
}

// TestCrossNodeSpillover: with every VI of node A taken, a new VI pod with
// no node preference is scheduled on another node and runs there.
func TestCrossNodeSpillover(t *testing.T) {
	a := setup(t)
	b := a.peer(t)
	n := a.capacity(t) - a.inUse(t)
	if n <= 0 {
		t.Fatalf("no free %s on %s to start from: other pods hold them all", a.resource, a.node)
	}
	if free := b.capacity(t) - b.inUse(t); free <= 0 {
		t.Fatalf("no free %s on %s: nowhere to spill to", b.resource, b.node)
	}
	a.create(t, a.viPod("fill", n))
	a.waitPod(t, "fill", "Running", 2*time.Minute, running)
	spill := a.viPod("spill", 1)
	spill.Spec.Affinity = nil // anywhere
	a.create(t, spill)
	p := a.waitPod(t, "spill", "Running", 2*time.Minute, running)
	if p.Spec.NodeName == a.node {
		t.Fatalf("spill pod runs on %s, whose %d VIs are all held by the fill pod", a.node, n)
	}
	a.waitLog(t, "spill", regexp.MustCompile(`SOCKET_OK`), 30*time.Second)
	t.Logf("%s full (%d VIs held): the new VI pod runs on %s", a.node, n, p.Spec.NodeName)
}

// TestCrossNodeAgentRestartIsolation: restarting node A's agent leaves node
// B alone: B's agent pod is the same pod with no restart, B keeps
// advertising the pool the whole time, B's VI pod keeps its socket, and a
// new VI pod on B is admitted while A's agent is away.
func TestCrossNodeAgentRestartIsolation(t *testing.T) {
	a := setup(t)
	b := a.peer(t)
	a.create(t, a.viPod("va", 1))
	b.create(t, b.viPod("vb", 1))
	va := a.waitPod(t, "va", "Running", 2*time.Minute, running)
	vb := b.waitPod(t, "vb", "Running", 2*time.Minute, running)
	b.waitLog(t, "vb", regexp.MustCompile(`SOCKET_OK`), 30*time.Second)
	agentB := a.agentPod(t, b.node)
	capB := b.capacity(t)
	var during []string
	a.restartAgent(t, func() {
		ctx := context.Background()
		node, err := b.cs.CoreV1().Nodes().Get(ctx, b.node, metav1.GetOptions{})
		if err == nil {
			q := node.Status.Allocatable[b.resource]
			if q.Value() != capB {
				during = append(during, fmt.Sprintf("%s allocatable %s=%d (was %d) while %s's agent restarted", b.node, b.resource, q.Value(), capB, a.node))
			}
		}
		// B admits a new VI pod while A's agent is down.
		b.create(t, b.viPod("vb2", 1))
		b.waitPod(t, "vb2", "Running while "+a.node+"'s agent restarts", 2*time.Minute, running)
	})
	for _, d := range during {
		t.Error(d)
	}
	if got := a.agentPod(t, b.node); got.UID != agentB.UID || restarts(&got) != restarts(&agentB) {
		t.Fatalf("%s's agent pod changed (uid %s -> %s, restarts %d -> %d) when %s's agent was restarted", b.node, agentB.UID, got.UID, restarts(&agentB), restarts(&got), a.node)
	}
	if c := b.capacity(t); c != capB {
		t.Fatalf("%s allocatable %s=%d after, was %d", b.node, b.resource, c, capB)
	}
	after := b.waitPod(t, "vb", "Running", 10*time.Second, running)
	if after.UID != vb.UID || restarts(after) != restarts(vb) {
		t.Fatalf("the VI pod on %s restarted with %s's agent", b.node, a.node)
	}
	if out := b.logs(t, "vb"); strings.Contains(out, "SOCKET_MISSING") {
		t.Fatalf("the VI pod on %s lost its broker socket when %s's agent restarted:\n%s", b.node, a.node, out)
	}
	b.waitLog(t, "vb2", regexp.MustCompile(`SOCKET_OK`), 30*time.Second)
	a.capacity(t)
	if got := a.waitPod(t, "va", "Running", 30*time.Second, running); restarts(got) != restarts(va) {
		t.Fatalf("the VI pod on %s restarted with its agent", a.node)
	}
}
