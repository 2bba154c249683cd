package release

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func unauthorized(k8stesting.Action) (bool, runtime.Object, error) {
	return true, nil, apierrors.NewUnauthorized("service account token no longer valid")
}

// Without a deletion seen, an API server that cannot answer keeps the
// release: a restart must never lose the pods' VIs.
func TestUnansweredKeeps(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("*", "*", unauthorized)
	w, err := New(Config{Client: client, DaemonSet: "ns/agent"})
	if err != nil {
		t.Fatal(err)
	}
	if gone, why := w.Gone(context.Background()); gone || !strings.Contains(why, "cannot ask") {
		t.Fatalf("Gone = %v %q, want kept", gone, why)
	}
}

func ds(ns, name string) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func TestNewRefusesBadReference(t *testing.T) {
	for _, ref := range []string{"", "x", "/x", "x/", "a/b/c"} {
		if _, err := New(Config{Client: fake.NewClientset(), DaemonSet: ref}); err == nil || !strings.Contains(err.Error(), "NAMESPACE/NAME") {
			t.Errorf("%q: %v, want a NAMESPACE/NAME error", ref, err)
		}
	}
}

// The deletion seen by the watch is remembered after the API server stops
// answering (helm deletes the RBAC right after the DaemonSet).
func TestDeletionSeenByTheWatchOutlivesTheAPI(t *testing.T) {
	client := fake.NewClientset(ds("kube-efvi", "agent"))
	marker := filepath.Join(t.TempDir(), "state", MarkerName)
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marker, []byte("stale\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Client: client, DaemonSet: "kube-efvi/agent", Marker: marker})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("stale marker kept: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if gone, why := w.Gone(ctx); gone {
		t.Fatalf("gone while the DaemonSet exists: %s", why)
	}
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	// Wait until the watch is established, then delete.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if acts := client.Actions(); len(acts) > 0 && acts[len(acts)-1].GetVerb() == "watch" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher never watched")
		}
	}
	if err := client.AppsV1().DaemonSets("kube-efvi").Delete(ctx, "agent", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("Run did not end on the deletion")
	}
	// The API no longer answers (a real one would say 401/403 now).
	client.PrependReactor("*", "*", unauthorized)
	gone, why := w.Gone(ctx)
	if !gone || !strings.Contains(why, "deleted") {
		t.Fatalf("Gone = %v %q, want deleted", gone, why)
	}
	b, err := os.ReadFile(marker)
	if err != nil || !strings.Contains(string(b), "kube-efvi/agent") {
		t.Fatalf("marker %q %v", b, err)
	}
}

func TestGoneAsksWhenTheWatchSawNothing(t *testing.T) {
	client := fake.NewClientset()
	w, err := New(Config{Client: client, DaemonSet: "ns/agent"})
	if err != nil {
		t.Fatal(err)
	}
	if gone, why := w.Gone(context.Background()); !gone || !strings.Contains(why, "gone") {
		t.Fatalf("Gone = %v %q, want gone", gone, why)
	}
	now := metav1.Now()
	d := ds("ns", "agent2")
	d.DeletionTimestamp = &now
	client = fake.NewClientset(d)
	w, _ = New(Config{Client: client, DaemonSet: "ns/agent2"})
	if gone, why := w.Gone(context.Background()); !gone || !strings.Contains(why, "being deleted") {
		t.Fatalf("Gone = %v %q, want being deleted", gone, why)
	}
}
