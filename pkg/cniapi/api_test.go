package cniapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

type fakeAgent struct {
	got    *Attachment
	addErr error
}

func (f *fakeAgent) Add(_ context.Context, a *Attachment) (*AddResponse, error) {
	f.got = a
	if f.addErr != nil {
		return nil, f.addErr
	}
	return &AddResponse{Devices: []string{"eth1-vi3"}, Filters: []string{"udp:10.0.0.1:5000"}}, nil
}
func (f *fakeAgent) Del(context.Context, *Attachment) (*DelResponse, error) {
	return &DelResponse{Removed: 2}, nil
}
func (f *fakeAgent) Check(context.Context, *Attachment) (*CheckResponse, error) {
	return nil, fmt.Errorf("plain failure")
}
func (f *fakeAgent) GC(_ context.Context, r *GCRequest) (*GCResponse, error) {
	return &GCResponse{Removed: []string{r.Network}}, nil
}
func (f *fakeAgent) Status(context.Context, *StatusRequest) (*StatusResponse, error) {
	return &StatusResponse{Ready: true, Ports: []string{"eth1"}}, nil
}

func serve(t *testing.T, a Agent) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "agent.sock")
	lis, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := NewServer(a, nil)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return path
}

func dial(t *testing.T, path string) *Client {
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRoundTrip(t *testing.T) {
	f := &fakeAgent{}
	c := dial(t, serve(t, f))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	att := &Attachment{Network: "k8s", ContainerID: "abc", IfName: "eth0", Netns: "/var/run/netns/x",
		PodNamespace: "ns", PodName: "p", PodUID: "u1",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}, DefaultFilters: "udp:5000"}
	resp, err := c.Add(ctx, att)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.got, att) {
		t.Fatalf("agent got %+v, want %+v", f.got, att)
	}
	if len(resp.Devices) != 1 || resp.Filters[0] != "udp:10.0.0.1:5000" {
		t.Fatalf("add response %+v", resp)
	}
	if d, err := c.Del(ctx, att); err != nil || d.Removed != 2 {
		t.Fatalf("del %+v, %v", d, err)
	}
	if g, err := c.GC(ctx, &GCRequest{Network: "k8s"}); err != nil || g.Removed[0] != "k8s" {
		t.Fatalf("gc %+v, %v", g, err)
	}
	if s, err := c.Status(ctx, &StatusRequest{}); err != nil || !s.Ready {
		t.Fatalf("status %+v, %v", s, err)
	}
	// A plain error becomes CodeInternal with the text in the details.
	_, err = c.Check(ctx, att)
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != CodeInternal || ce.Details != "plain failure" || IsUnreachable(err) {
		t.Fatalf("check error %#v", err)
	}
}

func TestFilterErrorsKeepTheirCode(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		code  uint
	}{
		{syscall.EPERM, CodeFilterRefused}, {syscall.EEXIST, CodeFilterConflict}, {syscall.EBUSY, CodeFilterConflict},
		{syscall.EINVAL, CodeBadFilter}, {syscall.EPROTONOSUPPORT, CodeBadFilter}, {syscall.ENOENT, CodeNotInstalled},
	} {
		fe := &filter.Error{Errno: tc.errno, Spec: "udp:10.9.9.9:5000", Reason: "because"}
		f := &fakeAgent{addErr: FromFilterError("install filters of pod ns/p", fmt.Errorf("wrapped: %w", fe))}
		c := dial(t, serve(t, f))
		_, err := c.Add(context.Background(), &Attachment{ContainerID: "a", IfName: "eth0"})
		var ce *Error
		if !errors.As(err, &ce) {
			t.Fatalf("%v: error %T %v", tc.errno, err, err)
		}
		if ce.Code != tc.code || ce.Errno == "" {
			t.Errorf("%v: code %d errno %q, want %d", tc.errno, ce.Code, ce.Errno, tc.code)
		}
		if want := "udp:10.9.9.9:5000"; !contains(ce.Msg, want) || !contains(ce.Msg, "because") {
			t.Errorf("%v: msg %q lacks the spec or the reason", tc.errno, ce.Msg)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestUnreachable(t *testing.T) {
	c := dial(t, filepath.Join(t.TempDir(), "none.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Status(ctx, &StatusRequest{})
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != CodeTryAgainLater || !IsUnreachable(err) {
		t.Fatalf("status with no agent: %#v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.sock")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(p); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
}
