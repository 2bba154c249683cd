package efvi

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/broker"
)

// TestDialRetryClassifies: only "not there yet" errors are retried.
func TestDialRetryClassifies(t *testing.T) {
	calls := 0
	_, err := dialRetry(context.Background(), "/x", time.Minute, func(context.Context, string) (*broker.Client, error) {
		calls++
		if calls < 3 {
			return nil, &broker.Error{Errno: syscall.ECONNREFUSED}
		}
		return nil, broker.Errorf(syscall.EPERM, "not your socket")
	})
	if calls != 3 || !strings.Contains(err.Error(), "not your socket") {
		t.Fatalf("%d calls, %v: want 2 refused attempts retried, then EPERM returned", calls, err)
	}
	// Bounded: a socket that never comes back fails, naming the agent.
	ctx, cancel := context.WithCancel(context.Background())
	calls = 0
	_, err = dialRetry(ctx, "/x", time.Minute, func(context.Context, string) (*broker.Client, error) {
		if calls++; calls == 2 {
			cancel()
		}
		return nil, syscall.ENOENT
	})
	if !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "agent") {
		t.Fatalf("never-there socket: %v", err)
	}
}

// TestDialAcrossRestart: a real socket that is missing when the pod dials
// (the agent is between its old and new process) is reached once the new
// agent listens, within one DialAgent call.
func TestDialAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.sock")
	failed := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		first := true
		_, err := dialRetry(context.Background(), path, time.Minute, func(ctx context.Context, p string) (*broker.Client, error) {
			c, err := broker.Dial(ctx, p)
			if err != nil && first {
				first = false
				close(failed)
			}
			return c, err
		})
		result <- err
	}()
	<-failed // the first attempt found no socket
	srv, err := broker.Listen(broker.Config{Path: path, Mode: 0o666,
		Sessions: broker.SessionFactoryFunc(func(context.Context, broker.Peer) (broker.Session, error) {
			return nil, broker.Errorf(syscall.EBUSY, "the restarted agent answered")
		})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case err := <-result:
		if err == nil || !strings.Contains(err.Error(), "the restarted agent answered") {
			t.Fatalf("dial across the restart: %v, want the new agent's answer", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dial did not reach the restarted agent (30 s hang guard)")
	}
}
