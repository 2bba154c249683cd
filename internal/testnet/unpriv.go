package testnet

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Nobody is the uid and gid unprivileged test processes run as.
const Nobody = 65534

// UnprivilegedCommand returns a command that re-runs the current test binary
// as uid/gid 65534 with no supplementary groups and no capabilities (a
// non-root credential drops them all), running no tests: the child is
// expected to branch in TestMain on an environment variable the caller adds.
// The binary is copied into a world-readable directory first, since the go
// tool's build directory is private to root. It also returns that directory,
// which uid 65534 can traverse (put sockets it must reach there).
func UnprivilegedCommand(t testing.TB, args ...string) (*exec.Cmd, string) {
	t.Helper()
	RequireRoot(t)
	dir, err := os.MkdirTemp("", "efvt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, filepath.Base(exe))
	if err := copyFile(exe, bin, 0o755); err != nil {
		t.Fatalf("copy test binary for the unprivileged child: %v", err)
	}
	cmd := exec.Command(bin, append([]string{"-test.run=^$"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: Nobody, Gid: Nobody, Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
	}
	return cmd, dir
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
