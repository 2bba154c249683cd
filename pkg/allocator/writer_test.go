package allocator

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestCheckpointerWritesLatestAndReportsErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cp.json")
	c := newCheckpointer(path, slog.New(slog.DiscardHandler))
	for i := 0; i < 50; i++ {
		c.submit([][]byte{[]byte(`{"id":"a","pool":"p","devices":["x"]}`)})
	}
	c.submit(nil) // the latest snapshot: no allocations
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	got, err := readCheckpoint(path)
	if err != nil || len(got) != 0 {
		t.Fatalf("checkpoint holds %v, %v; want the latest (empty) snapshot", got, err)
	}
	// A write that cannot succeed is reported by flush, not lost.
	bad := newCheckpointer(filepath.Join(path, "under-a-file.json"), slog.New(slog.DiscardHandler))
	bad.submit(nil)
	if err := bad.flush(); err == nil {
		t.Fatal("flush hid a failed write")
	}
	if err := bad.close(); err == nil {
		t.Fatal("close hid a failed write")
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	c.submit(nil) // after close: nothing runs, flush says so
	if err := c.flush(); err == nil {
		t.Fatal("flush after close claimed success")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}
