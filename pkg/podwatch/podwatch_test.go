package podwatch

import (
	"context"
	"slices"
	"testing"

	"github.com/kube-efvi/kube-efvi/pkg/attach"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

type fakeTarget struct {
	uids       map[string][]string // ns/name -> record UIDs
	reconciled []string
	swept      [][]attach.PodRef
}

func (f *fakeTarget) PodUIDs(ns, name string) []string { return f.uids[ns+"/"+name] }
func (f *fakeTarget) ReconcilePod(_ context.Context, ns, name string) ([]string, error) {
	f.reconciled = append(f.reconciled, ns+"/"+name)
	return []string{"k"}, nil
}
func (f *fakeTarget) Sweep(_ context.Context, live []attach.PodRef) ([]string, error) {
	f.swept = append(f.swept, live)
	return nil, nil
}

func pod(name, uid string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: k8stypes.UID(uid)},
		Status: corev1.PodStatus{Phase: phase}}
}

func TestReconcile(t *testing.T) {
	c := fake.NewClientBuilder().WithObjects(
		pod("running", "u1", corev1.PodRunning),
		pod("replaced", "u-new", corev1.PodRunning),
		pod("done", "u3", corev1.PodSucceeded),
		pod("noatt", "u4", corev1.PodRunning),
	).Build()
	tg := &fakeTarget{uids: map[string][]string{
		"ns/running": {"u1"}, "ns/replaced": {"u-old"}, "ns/done": {"u3"}, "ns/deleted": {"u5"},
	}}
	r := &Reconciler{Reader: c, Target: tg}
	for _, name := range []string{"running", "replaced", "done", "noatt", "deleted"} {
		req := reconcile.Request{NamespacedName: k8stypes.NamespacedName{Namespace: "ns", Name: name}}
		if _, err := r.Reconcile(context.Background(), req); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	want := []string{"ns/replaced", "ns/done", "ns/deleted"}
	if !slices.Equal(tg.reconciled, want) {
		t.Fatalf("reconciled %v, want %v (a running pod with its own UID and a pod without attachments are left alone)", tg.reconciled, want)
	}

	if err := r.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range tg.swept[0] {
		names = append(names, p.Name+"="+p.UID)
	}
	slices.Sort(names)
	if want := []string{"noatt=u4", "replaced=u-new", "running=u1"}; !slices.Equal(names, want) {
		t.Fatalf("sweep saw live pods %v, want %v (finished pods are not live)", names, want)
	}
}
