package testnet

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestRequireRootChild is run by TestRequireRootStrict as an unprivileged
// child; on its own it does nothing.
func TestRequireRootChild(t *testing.T) {
	if os.Getenv("EFVI_TESTNET_CHILD") != "1" {
		return
	}
	RequireRoot(t)
}

// TestRequireRootStrict runs a privileged test as uid 65534: it skips, and
// with EFVI_REQUIRE_PRIVILEGED=1 it fails.
func TestRequireRootStrict(t *testing.T) {
	RequireRoot(t) // to run a child as another uid
	dir, err := os.MkdirTemp("", "efvi-testnet-child")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "child.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err == nil {
		_, err = io.Copy(dst, src)
		dst.Close()
	}
	src.Close()
	if err != nil {
		t.Fatal(err)
	}
	run := func(strict string) (string, error) {
		cmd := exec.Command(bin, "-test.run", "^TestRequireRootChild$", "-test.v")
		cmd.Dir = dir
		cmd.Env = []string{"EFVI_TESTNET_CHILD=1", EnvRequirePrivileged + "=" + strict}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(""); err != nil || !strings.Contains(out, "SKIP privileged test") {
		t.Fatalf("unprivileged, not strict: %v\n%s", err, out)
	}
	if out, err := run("1"); err == nil || !strings.Contains(out, "forbids skipping") {
		t.Fatalf("unprivileged, strict: %v\n%s", err, out)
	}
}
