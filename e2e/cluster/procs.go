package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// start runs a daemon in its own session with output in LogDir/<name>.log
// and records its pid in pids/<name>.pid. The process outlives the caller.
func (c *Cluster) start(name, bin string, args ...string) error {
	logf, err := os.OpenFile(filepath.Join(c.LogDir(), name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig())
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	if err := cmd.Process.Release(); err != nil {
		return err
	}
	c.log.Debug("started", "component", name, "pid", pid)
	return os.WriteFile(c.pidFile(name), []byte(strconv.Itoa(pid)+" "+filepath.Base(bin)+"\n"), 0o644)
}

func (c *Cluster) pidFile(name string) string { return filepath.Join(c.pidDir(), name+".pid") }

// running returns the pid recorded for name if that process is still the
// same program (argv[0] base name matches), else 0.
func (c *Cluster) running(name string) int {
	b, err := os.ReadFile(c.pidFile(name))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	if filepath.Base(argv0) != f[1] {
		return 0 // the pid was reused by another program
	}
	return pid
}

// stop sends SIGTERM to the recorded process, then SIGKILL after grace.
func (c *Cluster) stop(ctx context.Context, name string, grace time.Duration) error {
	defer os.Remove(c.pidFile(name))
	pid := c.running(name)
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", name, pid, err)
	}
	if poll(ctx, grace, func() error {
		if c.alive(pid) {
			return errors.New("still running")
		}
		return nil
	}) == nil {
		return nil
	}
	c.log.Warn("did not exit on SIGTERM; killing", "component", name, "pid", pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s (pid %d): %w", name, pid, err)
	}
	return nil
}

// alive: the process exists and is not a zombie.
func (c *Cluster) alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
