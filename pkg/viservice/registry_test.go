package viservice

import (
	"net"
	"testing"
)

func TestRegistryNeverIssuesADeviceTwice(t *testing.T) {
	p, err := NewPort("eth1", net.HardwareAddr{2, 0, 0, 0, 0, 1}, 1500, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistry()
	r.AddPort(p)
	a1, err := NewAllocation("eth1", p, []string{"eth1-vi0", "eth1-vi1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := NewAllocation("eth1", p, []string{"eth1-vi1"}, nil)
	if err := r.Add("a1", a1); err != nil {
		t.Fatal(err)
	}
	if err := r.Add("a2", a2); err == nil {
		t.Fatal("a second allocation of eth1-vi1 was accepted")
	}
	if id, a, ok := r.ByDevice("eth1-vi1"); !ok || id != "a1" || a != a1 {
		t.Fatalf("ByDevice = %s %v %v", id, a, ok)
	}
	if r.Remove("a1") != a1 || r.Remove("a1") != nil {
		t.Fatal("remove not idempotent")
	}
	if err := r.Add("a2", a2); err != nil {
		t.Fatalf("device not released by Remove: %v", err)
	}
	if _, err := NewAllocation("eth1", p, []string{"eth2-vi1"}, nil); err == nil {
		t.Fatal("device of another port accepted")
	}
	if got := r.Ports(); len(got) != 1 || got[0] != p {
		t.Fatalf("ports %v", got)
	}
}
