package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kube-efvi/kube-efvi/internal/atomicfile"
)

// aptPackages are the Debian packages the cluster needs, by the binary each
// provides.
var aptPackages = map[string]string{
	"containerd": "containerd",
	"runc":       "runc",
	"etcd":       "etcd-server",
	"etcdctl":    "etcd-client",
	"iptables":   "iptables",
	"busybox":    "busybox-static",
}

// run runs a command, returning its combined output in the error on failure.
func run(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tail := out
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail)
	}
	return out, nil
}

func (c *Cluster) aptPackages(ctx context.Context) error {
	var missing []string
	for bin, pkg := range aptPackages {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 || c.o.SkipApt {
		return nil
	}
	c.stamp("apt-get install", "packages", missing)
	if _, err := run(ctx, "", nil, "apt-get", "update", "-qq"); err != nil {
		return err
	}
	args := append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)
	if _, err := run(ctx, "", []string{"DEBIAN_FRONTEND=noninteractive"}, "apt-get", args...); err != nil {
		return err
	}
	// Debian may have started its own etcd/containerd from init scripts; the
	// harness runs its own with its own config.
	for _, n := range []string{"etcd", "containerd"} {
		_, _ = run(ctx, "", nil, "service", n, "stop")
	}
	return nil
}

// k8sComponents are the binaries built from k8s.io/kubernetes.
var k8sComponents = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"}

func (c *Cluster) buildKubernetes(ctx context.Context) error {
	want := "Kubernetes v" + c.o.K8sVersion
	fresh := true
	for _, n := range k8sComponents {
		args := []string{"--version"}
		if n == "kubectl" {
			args = []string{"version", "--client"}
		}
		out, err := exec.CommandContext(ctx, filepath.Join(c.BinDir(), n), args...).Output()
		if err != nil || !strings.Contains(string(out), want) && !strings.Contains(string(out), "Client Version: v"+c.o.K8sVersion) {
			fresh = false
			break
		}
	}
	if fresh {
		c.stamp("kubernetes binaries cached", "dir", c.BinDir())
		return nil
	}
	env := []string{"GOFLAGS=-mod=mod", "GOWORK=off", "CGO_ENABLED=0"}
	c.stamp("kubernetes source", "version", c.o.K8sVersion)
	out, err := run(ctx, "", env, "go", "mod", "download", "-json", "k8s.io/kubernetes@v"+c.o.K8sVersion)
	if err != nil {
		return fmt.Errorf("download k8s.io/kubernetes (the module proxy has every staging module only for some versions: 1.31.0, 1.32.2, 1.34.x): %w", err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return fmt.Errorf("go mod download k8s.io/kubernetes: no module dir in %q (%v %s)", out, err, mod.Error)
	}
	src := filepath.Join(c.o.CacheDir, "k8s-v"+c.o.K8sVersion, "src")
	if err := os.RemoveAll(src); err != nil {
		return err
	}
	if _, err := run(ctx, "", nil, "cp", "-r", mod.Dir, src); err != nil {
		return err
	}
	if _, err := run(ctx, "", nil, "chmod", "-R", "u+w", src); err != nil {
		return err
	}
	for _, n := range []string{"go.work", "go.work.sum", "vendor"} {
		if err := os.RemoveAll(filepath.Join(src, n)); err != nil {
			return err
		}
	}
	// The module zip has no staging/ tree: point each ./staging replace at
	// the published k8s.io/X@v0.<minor>.<patch>.
	gomod, err := os.ReadFile(filepath.Join(src, "go.mod"))
	if err != nil {
		return err
	}
	args := []string{"mod", "edit"}
	for _, m := range stagingReplaces(gomod) {
		args = append(args, "-replace="+m+"="+m+"@v0."+strings.TrimPrefix(c.o.K8sVersion, "1."))
	}
	if len(args) == 2 {
		return fmt.Errorf("k8s.io/kubernetes@v%s go.mod has no ./staging replaces: unexpected layout", c.o.K8sVersion)
	}
	if _, err := run(ctx, src, env, "go", args...); err != nil {
		return err
	}
	if _, err := run(ctx, src, env, "go", "mod", "download"); err != nil {
		return err
	}
	c.stamp("kubernetes build (cold: several minutes on 2 cores)", "components", k8sComponents)
	ldflags := "-s -w " + versionLDFlags(c.o.K8sVersion)
	bargs := []string{"build", "-trimpath", "-ldflags", ldflags, "-o", c.BinDir() + "/"}
	for _, n := range k8sComponents {
		bargs = append(bargs, "./cmd/"+n)
	}
	if _, err := run(ctx, src, env, "go", bargs...); err != nil {
		return err
	}
	// The source is only needed to build; keep the cache small.
	return os.RemoveAll(src)
}

var stagingRE = regexp.MustCompile(`^\s*(k8s\.io/[^\s]+)\s+=>\s+\./staging/`)

// stagingReplaces lists the modules go.mod replaces with ./staging paths.
func stagingReplaces(gomod []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		line := sc.Text()
		line = strings.TrimPrefix(strings.TrimSpace(line), "replace ")
		if m := stagingRE.FindStringSubmatch(line); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// versionLDFlags stamps the version the binaries report.
func versionLDFlags(v string) string {
	minor := strings.Split(v, ".")[1]
	var b strings.Builder
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		fmt.Fprintf(&b, " -X %s.gitVersion=v%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean", p, v, p, p, minor, p)
	}
	return strings.TrimSpace(b.String())
}

// cniPlugins are the reference plugins the node's network uses.
var cniPlugins = []string{"main/bridge", "main/loopback", "ipam/host-local", "meta/portmap"}

func (c *Cluster) buildCNIPlugins(ctx context.Context) error {
	cache := filepath.Join(c.o.CacheDir, "cni-plugins-"+c.o.CNIVersion)
	var pkgs []string
	for _, p := range cniPlugins {
		if _, err := os.Stat(filepath.Join(cache, filepath.Base(p))); err != nil {
			pkgs = append(pkgs, "github.com/containernetworking/plugins/plugins/"+p+"@"+c.o.CNIVersion)
		}
	}
	if len(pkgs) > 0 {
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return err
		}
		args := append([]string{"install", "-trimpath", "-ldflags", "-s -w"}, pkgs...)
		if _, err := run(ctx, "", []string{"GOBIN=" + cache, "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off"}, "go", args...); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(c.o.CNIBinDir, 0o755); err != nil {
		return err
	}
	for _, p := range cniPlugins {
		n := filepath.Base(p)
		if err := copyFile(filepath.Join(cache, n), filepath.Join(c.o.CNIBinDir, n), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies src to dst atomically (temp file + rename).
func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return atomicfile.Write(dst, b, mode, false)
}
