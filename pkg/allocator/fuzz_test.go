package allocator

import (
	"os"
	"path/filepath"
	"testing"
)

func FuzzParseDeviceID(f *testing.F) {
	for _, s := range []string{"sfc0-vi3", "a-vi-vi0", "-vi0", "x-vi01", "eth0-vi1023"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		port, i, ok := ParseDeviceID(s)
		if ok && DeviceID(port, i) != s {
			t.Fatalf("ParseDeviceID(%q) = %q,%d does not round-trip", s, port, i)
		}
	})
}

func FuzzReadCheckpoint(f *testing.F) {
	good := filepath.Join(f.TempDir(), "good.json")
	if err := writeCheckpoint(good, []Allocation{{ID: "a", Pool: "p", Devices: []string{"e-vi0"}}}); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	f.Add(b)
	f.Add([]byte(`{"version":1,"allocations":null,"checksum":""}`))
	f.Add([]byte(`{}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "cp.json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := New(Options{CheckpointPath: p})
		if err != nil {
			return
		}
		// Whatever was accepted must be consistent: every device held by
		// exactly the allocation that lists it.
		for _, al := range a.Allocations() {
			for _, d := range al.Devices {
				if a.held[al.Pool][d] == "" {
					t.Fatalf("device %s of %s not indexed", d, al.ID)
				}
			}
		}
	})
}
