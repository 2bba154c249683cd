package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/internal/atomicfile"
	"github.com/kube-efvi/kube-efvi/internal/image"
)

// cgroupV1Controllers are the v1 hierarchies the kubelet needs that these
// hybrid hosts do not mount by default.
var cgroupV1Controllers = []string{"hugetlb", "net_cls,net_prio", "perf_event"}

const bpffs = "/sys/fs/bpf"

func (c *Cluster) hostSetup(ctx context.Context) error {
	for _, ctl := range cgroupV1Controllers {
		dir := filepath.Join("/sys/fs/cgroup", ctl)
		if isMountPoint(dir) {
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", ctl, err)
		}
		if err := unix.Mount("cgroup", dir, "cgroup", 0, ctl); err != nil {
			return fmt.Errorf("mount cgroup v1 %s on %s: %w", ctl, dir, err)
		}
	}
	// bpffs, shared: the agent mounts it with HostToContainer propagation,
	// which containerd refuses on a private mount (the default without
	// systemd, which makes every mount shared).
	if !isMountPoint(bpffs) {
		if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", bpffs, err)
		}
	}
	if err := unix.Mount("", bpffs, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", bpffs, err)
	}
	// Pods reach each other and the node through the bridge; a dockerd that
	// once ran may have left FORWARD at DROP.
	if _, err := run(ctx, "", nil, "iptables", "-P", "FORWARD", "ACCEPT"); err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip_forward: %w", err)
	}
	if err := os.MkdirAll(c.o.CNIConfDir, 0o755); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(c.o.CNIConfDir, ConflistName), []byte(Conflist()), 0o644, false)
}

// Conflist is the node's CNI network: bridge + host-local + portmap. The
// efvi-cni install step appends itself to this file.
func Conflist() string {
	return `{
  "cniVersion": "1.0.0",
  "name": "` + NetworkName + `",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "` + Bridge + `",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "` + PodSubnet + `"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
`
}

// isMountPoint reports whether dir is a mount point (its device differs
// from its parent's).
func isMountPoint(dir string) bool {
	var st, pst unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &pst) != nil {
		return false
	}
	return st.Dev != pst.Dev
}

// buildPauseImage builds internal/image/cmd/pause statically and packs it
// as PauseImage.
func (c *Cluster) buildPauseImage(ctx context.Context) error {
	bin := filepath.Join(c.imageDir(), "pause")
	if _, err := run(ctx, c.o.RepoDir, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin,
		"github.com/kube-efvi/kube-efvi/internal/image/cmd/pause"); err != nil {
		return err
	}
	_, err := image.WriteFile(filepath.Join(c.imageDir(), "pause.tar"), image.Spec{
		Ref: PauseImage, Files: []image.File{{Src: bin, Dst: "/pause", Mode: 0o755}}, Entrypoint: []string{"/pause"},
	})
	return err
}

// ContainerdConfig patches `containerd config default` output: the local
// sandbox image, and restrict_oom_score_adj (root here lacks
// CAP_SYS_RESOURCE, so runc cannot give the sandbox oom_score_adj -998 and
// every sandbox fails with "can't get final child's PID from pipe: EOF").
func ContainerdConfig(def string, cniBin, cniConf string) (string, error) {
	var out []string
	found := map[string]bool{}
	for _, line := range strings.Split(def, "\n") {
		t := strings.TrimSpace(line)
		indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
		switch {
		case strings.HasPrefix(t, "sandbox_image ="):
			line, found["sandbox_image"] = indent+`sandbox_image = "`+PauseImage+`"`, true
		case strings.HasPrefix(t, "restrict_oom_score_adj ="):
			line, found["restrict_oom_score_adj"] = indent+"restrict_oom_score_adj = true", true
		case strings.HasPrefix(t, "bin_dir =") && strings.Contains(t, "cni"):
			line, found["bin_dir"] = indent+`bin_dir = "`+cniBin+`"`, true
		case strings.HasPrefix(t, "conf_dir =") && strings.Contains(t, "cni"):
			line, found["conf_dir"] = indent+`conf_dir = "`+cniConf+`"`, true
		}
		out = append(out, line)
	}
	for _, k := range []string{"sandbox_image", "restrict_oom_score_adj", "bin_dir", "conf_dir"} {
		if !found[k] {
			return "", fmt.Errorf("containerd default config has no %s setting: unsupported containerd version (want 1.6/1.7)", k)
		}
	}
	return strings.Join(out, "\n"), nil
}

func (c *Cluster) startContainerd(ctx context.Context) error {
	def, err := run(ctx, "", nil, "containerd", "config", "default")
	if err != nil {
		return err
	}
	cfg, err := ContainerdConfig(string(def), c.o.CNIBinDir, c.o.CNIConfDir)
	if err != nil {
		return err
	}
	p := filepath.Join(c.confDir(), "containerd.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		return err
	}
	if err := c.start("containerd", "containerd", "--config", p); err != nil {
		return err
	}
	if err := poll(ctx, 30*time.Second, func() error {
		_, err := run(ctx, "", nil, "ctr", "version")
		return err
	}); err != nil {
		return fmt.Errorf("containerd did not answer: %w", err)
	}
	return ImportImage(ctx, filepath.Join(c.imageDir(), "pause.tar"))
}

// ImportImage loads a docker-archive into containerd's k8s.io namespace,
// where the kubelet's images live.
func ImportImage(ctx context.Context, tarball string) error {
	_, err := run(ctx, "", nil, "ctr", "-n", "k8s.io", "images", "import", tarball)
	return err
}

// poll calls f until it succeeds, ctx ends or timeout passes.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", timeout, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}
