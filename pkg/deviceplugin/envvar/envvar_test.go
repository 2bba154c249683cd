package envvar

import (
	"reflect"
	"testing"
)

func TestSuffix(t *testing.T) {
	for in, want := range map[string]string{"fast": "FAST", "fast-a": "FAST_A", "a1.b": "A1_B"} {
		if got := Suffix(in); got != want {
			t.Errorf("Suffix(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestResolve(t *testing.T) {
	two := []string{
		"EFVI_SOCKET=/run/efvi/zeta/broker.sock", "EFVI_DEVICES=z-vi0", // kubelet picked zeta's plain vars
		"EFVI_SOCKET_ZETA=/run/efvi/zeta/broker.sock", "EFVI_DEVICES_ZETA=z-vi0",
		"EFVI_SOCKET_ALPHA=/run/efvi/alpha/broker.sock", "EFVI_DEVICES_ALPHA=a-vi0,a-vi1",
		"PATH=/bin",
	}
	got, err := Resolve(two, "")
	if err != nil {
		t.Fatal(err)
	}
	want := Allocation{Pool: "ALPHA", Socket: "/run/efvi/alpha/broker.sock", Devices: []string{"a-vi0", "a-vi1"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Resolve(two, \"\") = %+v, want %+v (alphabetically first)", got, want)
	}
	if got, err := Resolve(two, "zeta"); err != nil || got.Socket != "/run/efvi/zeta/broker.sock" {
		t.Errorf("Resolve(two, zeta) = %+v, %v", got, err)
	}
	if _, err := Resolve(two, "beta"); err == nil {
		t.Error("unallocated pool accepted")
	}
	if got, err := Resolve([]string{"EFVI_SOCKET=/x", "EFVI_DEVICES="}, ""); err != nil || got.Socket != "/x" || got.Devices != nil {
		t.Errorf("plain only = %+v, %v", got, err)
	}
	if _, err := Resolve(nil, ""); err == nil {
		t.Error("empty environment accepted")
	}
}
