package kubeletcheckpoint

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// real is a checkpoint as a v1.31 kubelet wrote it (one VI pod, one GPU pod,
// NUMA-less devices under "-1", a device on two NUMA nodes).
const real = `{"Data":{"PodDeviceEntries":[` +
	`{"PodUID":"0b9f6c1e-1111-4a4a-9c9c-000000000001","ContainerName":"app","ResourceName":"efvi.io/efvi0","DeviceIDs":{"-1":["efvi0-vi1"]},"AllocResp":"CgQKAkVGEgA="},` +
	`{"PodUID":"0b9f6c1e-1111-4a4a-9c9c-000000000002","ContainerName":"cuda","ResourceName":"nvidia.com/gpu","DeviceIDs":{"0":["GPU-1"],"1":["GPU-1"]},"AllocResp":""}],` +
	`"RegisteredDevices":{"efvi.io/efvi0":["efvi0-vi0","efvi0-vi1"],"nvidia.com/gpu":["GPU-1"]}},"Checksum":2998291163}`

func TestParse(t *testing.T) {
	cp, err := Parse([]byte(real))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{PodUID: "0b9f6c1e-1111-4a4a-9c9c-000000000001", ContainerName: "app", ResourceName: "efvi.io/efvi0", DeviceIDs: []string{"efvi0-vi1"}},
		{PodUID: "0b9f6c1e-1111-4a4a-9c9c-000000000002", ContainerName: "cuda", ResourceName: "nvidia.com/gpu", DeviceIDs: []string{"GPU-1"}},
	}
	if !reflect.DeepEqual(cp.Entries, want) {
		t.Fatalf("entries %+v", cp.Entries)
	}
	if r := cp.PodResources("0b9f6c1e-1111-4a4a-9c9c-000000000001", "efvi.io"); !reflect.DeepEqual(r, []string{"efvi.io/efvi0"}) {
		t.Fatalf("VI pod resources %v", r)
	}
	if r := cp.PodResources("0b9f6c1e-1111-4a4a-9c9c-000000000002", "efvi.io"); r != nil {
		t.Fatalf("GPU pod holds efvi.io resources %v", r)
	}
	if r := cp.PodResources("0b9f6c1e-1111-4a4a-9c9c-000000000001", "efvi.i"); r != nil {
		t.Fatalf("domain prefix matched %v", r)
	}
	if uid, ok := cp.Owner("efvi.io/efvi0", "efvi0-vi1"); !ok || uid != want[0].PodUID {
		t.Fatalf("owner %q %v", uid, ok)
	}
	if _, ok := cp.Owner("efvi.io/efvi0", "efvi0-vi0"); ok {
		t.Fatal("a free device has an owner")
	}
	// v1 (pre-1.20) and an empty kubelet.
	cp, err = Parse([]byte(`{"PodDeviceEntries":[{"PodUID":"u","ContainerName":"c","ResourceName":"efvi.io/a","DeviceIDs":["a-vi0"]}],"RegisteredDevices":{}}`))
	if err != nil || len(cp.Entries) != 1 || cp.Entries[0].DeviceIDs[0] != "a-vi0" {
		t.Fatalf("v1: %+v %v", cp, err)
	}
	if cp, err := Parse([]byte(`{"Data":{"PodDeviceEntries":null,"RegisteredDevices":{}},"Checksum":1}`)); err != nil || len(cp.Entries) != 0 {
		t.Fatalf("empty: %+v %v", cp, err)
	}
}

func TestParseBad(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"Data":`, "not valid JSON"},
		{`{}`, "not a device manager checkpoint"},
		{`[]`, "not valid JSON"},
		{`{"Data":{"PodDeviceEntries":[{"ResourceName":"efvi.io/a"}]}}`, "no PodUID"},
		{`{"Data":{"PodDeviceEntries":[{"PodUID":"u","ResourceName":"efvi.io/a","DeviceIDs":{"x":1}}]}}`, "DeviceIDs"},
	} {
		if _, err := Parse([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestReadAndMarshal(t *testing.T) {
	p := filepath.Join(t.TempDir(), FileName)
	if _, err := Read(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	in := []Entry{{PodUID: "u1", ContainerName: "c", ResourceName: "efvi.io/p", DeviceIDs: []string{"e-vi0", "e-vi1"}}}
	b, err := Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := Read(p)
	if err != nil || !reflect.DeepEqual(cp.Entries, in) {
		t.Fatalf("round trip %+v %v", cp, err)
	}
	if err := os.WriteFile(p, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("garbage: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(real))
	f.Add([]byte(`{"PodDeviceEntries":[{"PodUID":"u","ContainerName":"c","ResourceName":"efvi.io/a","DeviceIDs":["a-vi0"]}]}`))
	f.Add([]byte(`{"Data":{"PodDeviceEntries":null}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cp, err := Parse(data)
		if err != nil {
			if cp != nil {
				t.Fatal("checkpoint with an error")
			}
			return
		}
		for _, e := range cp.Entries {
			if e.PodUID == "" || e.ResourceName == "" {
				t.Fatalf("entry without identity: %+v", e)
			}
			if len(e.DeviceIDs) > 0 {
				if uid, ok := cp.Owner(e.ResourceName, e.DeviceIDs[0]); !ok || uid == "" {
					t.Fatalf("entry %+v has no owner", e)
				}
			}
		}
	})
}
