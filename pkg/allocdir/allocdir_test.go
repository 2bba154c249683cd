package allocdir

import (
	"context"
	"os"
	"testing"

	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
)

func TestDirs(t *testing.T) {
	b := Dirs{Root: t.TempDir()}
	for _, bad := range [][2]string{{"", "x"}, {"p", ""}, {"p", "../x"}, {"..", "x"}} {
		if _, err := b.Prepare(context.Background(), preq(bad[0], bad[1])); err == nil {
			t.Errorf("Prepare(%q,%q) accepted", bad[0], bad[1])
		}
	}
	m, err := b.Prepare(context.Background(), preq("p", "abc"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Prepare(context.Background(), preq("p", "abc")); err != nil {
		t.Fatalf("Prepare is not idempotent: %v", err)
	}
	if st, err := os.Stat(m.HostPath); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir %v %v", st, err)
	}
	if err := b.Release(context.Background(), "p", "abc"); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(context.Background(), "p", "abc"); err != nil {
		t.Fatalf("Release is not idempotent: %v", err)
	}
}

func preq(pool, id string) deviceplugin.PrepareRequest {
	return deviceplugin.PrepareRequest{Pool: pool, AllocationID: id, Devices: []string{"e-vi0"}}
}
