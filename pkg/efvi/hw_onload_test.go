//go:build onload && cgo

package efvi

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHardwareSDKDialAgentNoNIC runs the tagged SDK's DialAgent on a
// hardware allocation against the agent's real cluster server: libciul's
// own ef_pd_alloc_by_name does the handshake and gets the PD, then
// ef_driver_open fails because there is no /dev/sfc_char here. That failure
// is where hardware starts; it must be a clear error, not a panic or a
// hang, and the agent's grant must be released.
func TestHardwareSDKDialAgentNoNIC(t *testing.T) {
	if _, err := os.Stat("/dev/sfc_char"); err == nil {
		t.Skip("/dev/sfc_char exists: this machine has a Solarflare/AMD NIC driver, so the no-NIC path cannot be shown here")
	}
	a := startAgentCluster(t, "efvi-a1", "eth7")
	t.Setenv(EnvSocket, "")
	t.Setenv(EnvClusterSocket, a.path)
	t.Setenv(EnvClusterName, "0@efvi-a1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := DialAgent(ctx, "")
	if d != nil {
		d.Close()
		t.Fatal("DialAgent succeeded without a NIC")
	}
	if !errors.Is(err, ErrNoNICDevice) {
		t.Fatalf("DialAgent: %v; want ErrNoNICDevice after the handshake", err)
	}
	if a.allocs.Load() != 1 {
		t.Fatalf("the agent saw %d allocations, want 1: libciul's handshake did not reach it", a.allocs.Load())
	}
	for _, want := range []string{"eth7", "efvi-a1", "/dev/sfc_char"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	t.Logf("hardware starts here: %v", err)
	a.waitDone(t, 1) // ef_pd_free closed the cluster socket

	// An unknown cluster: libciul falls back to a local interface of that
	// name, which does not exist; the error says so.
	t.Setenv(EnvClusterName, "nosuch")
	_, err = DialAgent(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown cluster: %v", err)
	}
}

func TestHardwareSDKPollEmpty(t *testing.T) {
	v, free, err := newBenchHardwareVI()
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	evs := make([]Event, 64)
	if n := v.EventQPoll(evs); n != 0 {
		t.Fatalf("empty EF10 event queue polled %d events", n)
	}
	if v.EventQHasEvent() {
		t.Fatal("empty event queue has an event")
	}
	if n := v.EventQPoll(evs[:1]); n != 0 {
		t.Fatal("a poll with fewer than EF_VI_EVENT_POLL_MIN_EVS slots must return 0")
	}
	if allocs := testing.AllocsPerRun(1000, func() { v.EventQPoll(evs) }); allocs != 0 {
		t.Fatalf("EventQPoll allocates %v times per call", allocs)
	}
}

// BenchmarkHardwareSDKPollEmpty is the cost of one EventQPoll through the
// cgo wrapper: cgo transition + libciul's EF10 poll of an empty queue.
func BenchmarkHardwareSDKPollEmpty(b *testing.B) {
	v, free, err := newBenchHardwareVI()
	if err != nil {
		b.Fatal(err)
	}
	defer free()
	evs := make([]Event, 64)
	b.ReportAllocs()
	for b.Loop() {
		v.EventQPoll(evs)
	}
}

// BenchmarkHardwareSDKWrapperCall is one bare cgo wrapper call
// (ef_eventq_has_event): the floor every non-batched call pays.
func BenchmarkHardwareSDKWrapperCall(b *testing.B) {
	v, free, err := newBenchHardwareVI()
	if err != nil {
		b.Fatal(err)
	}
	defer free()
	b.ReportAllocs()
	for b.Loop() {
		benchHasEvent(v)
	}
}

var errNoNICForTest = ErrNoNICDevice
