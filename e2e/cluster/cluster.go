// Package cluster brings up and tears down the project's e2e Kubernetes: a
// real single-node cluster on the host (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and a kubelet on containerd/runc
// with bridge CNI), with nothing pulled from a registry.
//
// Everything it needs comes from Debian packages (containerd, runc, etcd,
// iptables, busybox-static) and the Go module proxy (Kubernetes itself, CNI
// plugins, helm). Kubernetes is built once into a cache directory keyed by
// version (Options.CacheDir), so a second Up skips the ~4 minute build. The
// sandbox ("pause") image is built locally by internal/image.
//
// Up is idempotent in the sense that it first stops whatever a previous Up
// left running. Down stops every process it started (by the pids it
// recorded, checked against their command names), removes containers,
// unmounts pod volumes and deletes the bridge, the CNI config it wrote and
// the etcd data. Logs of every component stay in Options.WorkDir/logs so CI
// can print them on failure.
//
// Gotchas of these machines: root lacks CAP_SYS_RESOURCE (containerd needs
// restrict_oom_score_adj); cgroups are hybrid v1 (mount the missing v1
// controllers; Kubernetes 1.35+ refuses v1 by default, so 1.34 is the newest
// usable here); the module proxy has every staging module only for a few
// Kubernetes versions (1.31.0, 1.32.2, 1.34.x); --advertise-address must not
// be loopback.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults.
const (
	DefaultWorkDir     = "/tmp/kube-efvi-e2e"
	DefaultCacheDir    = "/var/cache/kube-efvi"
	DefaultK8sVersion  = "1.34.2"
	DefaultCNIVersion  = "v1.9.1"
	DefaultHelmVersion = "v3.16.4"
	// PauseImage is the sandbox image containerd is configured with.
	PauseImage = "localhost/kube-efvi/pause:dev"
	// ClusterCIDR is the pod network; the node gets PodCIDR from it.
	PodSubnet = "10.244.0.0/24"
	// NetworkName is the name of the CNI network the harness writes.
	NetworkName = "kube-efvi-e2e"
	// ConflistName is the file the harness writes in CNIConfDir.
	ConflistName = "10-kube-efvi-e2e.conflist"
	// Bridge is the CNI bridge device.
	Bridge = "cni0"
)

// Options configures the cluster. Zero values take the defaults.
type Options struct {
	// WorkDir holds PKI, configs, pid files, etcd data and logs (WorkDir/logs).
	WorkDir string
	// CacheDir keeps built Kubernetes binaries across runs.
	CacheDir string
	// RepoDir is the kube-efvi checkout (to build the pause image); default cwd.
	RepoDir    string
	K8sVersion string
	CNIVersion string
	// CNIBinDir and CNIConfDir are the node's CNI directories.
	CNIBinDir  string
	CNIConfDir string
	// NodeIP is the address the apiserver advertises and the kubelet uses;
	// default: the source address of the default route (nothing is sent).
	NodeIP string
	// NodeName defaults to the hostname.
	NodeName string
	// SkipApt assumes the Debian packages are installed.
	SkipApt bool
	Logger  *slog.Logger
}

// Cluster is the local cluster described by Options.
type Cluster struct {
	o   Options
	log *slog.Logger
	t0  time.Time
}

// New fills the defaults.
func New(o Options) (*Cluster, error) {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.WorkDir, DefaultWorkDir)
	def(&o.CacheDir, DefaultCacheDir)
	def(&o.K8sVersion, DefaultK8sVersion)
	def(&o.CNIVersion, DefaultCNIVersion)
	def(&o.CNIBinDir, "/opt/cni/bin")
	def(&o.CNIConfDir, "/etc/cni/net.d")
	if o.RepoDir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		o.RepoDir = wd
	}
	if o.NodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
		o.NodeName = strings.ToLower(h)
	}
	if o.NodeIP == "" {
		ip, err := defaultRouteSource()
		if err != nil {
			return nil, fmt.Errorf("node IP (set NodeIP to choose one): %w", err)
		}
		o.NodeIP = ip
	}
	if ip := net.ParseIP(o.NodeIP); ip == nil || ip.IsLoopback() {
		return nil, fmt.Errorf("node IP %q: want a non-loopback IPv4 address (the apiserver refuses to advertise loopback)", o.NodeIP)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Cluster{o: o, log: o.Logger}, nil
}

// defaultRouteSource is the local address the kernel would use to reach a
// public address: a UDP "connect" picks the route without sending anything.
func defaultRouteSource() (string, error) {
	c, err := net.Dial("udp4", "192.0.2.255:9") // TEST-NET-1; connect() sends nothing
	if err != nil {
		return "", fmt.Errorf("no IPv4 default route: %w", err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// Paths.

// Kubeconfig is the admin kubeconfig.
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.o.WorkDir, "pki", "admin.kubeconfig") }

// LogDir holds one log file per component.
func (c *Cluster) LogDir() string { return filepath.Join(c.o.WorkDir, "logs") }

// BinDir holds the Kubernetes binaries for the configured version.
func (c *Cluster) BinDir() string {
	return filepath.Join(c.o.CacheDir, "k8s-v"+c.o.K8sVersion, "bin")
}

// Kubectl is the path of the kubectl built with the cluster.
func (c *Cluster) Kubectl() string { return filepath.Join(c.BinDir(), "kubectl") }

// NodeName is the node's name.
func (c *Cluster) NodeName() string { return c.o.NodeName }

func (c *Cluster) pkiDir() string   { return filepath.Join(c.o.WorkDir, "pki") }
func (c *Cluster) confDir() string  { return filepath.Join(c.o.WorkDir, "conf") }
func (c *Cluster) pidDir() string   { return filepath.Join(c.o.WorkDir, "pids") }
func (c *Cluster) imageDir() string { return filepath.Join(c.o.WorkDir, "images") }

func (c *Cluster) stamp(msg string, args ...any) {
	c.log.Info(msg, append([]any{"elapsed", time.Since(c.t0).Round(100 * time.Millisecond).String()}, args...)...)
}

// Up brings the cluster up and waits for the node to be Ready.
func (c *Cluster) Up(ctx context.Context) error {
	c.t0 = time.Now()
	if os.Geteuid() != 0 {
		return errors.New("the e2e cluster needs root (containerd, kubelet, mounts, iptables); run it with sudo or in CI")
	}
	if err := c.Down(ctx); err != nil {
		c.log.Warn("cleaning up a previous run", "err", err)
	}
	if err := os.RemoveAll(c.LogDir()); err != nil {
		return err
	}
	for _, d := range []string{c.LogDir(), c.pkiDir(), c.confDir(), c.pidDir(), c.imageDir(), c.BinDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"apt packages", c.aptPackages},
		{"kubernetes binaries", c.buildKubernetes},
		{"cni plugins", c.buildCNIPlugins},
		{"host setup", c.hostSetup},
		{"pause image", c.buildPauseImage},
		{"containerd", c.startContainerd},
		{"pki", c.writePKI},
		{"control plane", c.startControlPlane},
		{"kubelet", c.startKubelet},
	}
	for _, s := range steps {
		c.stamp("step " + s.name)
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w (logs in %s)", s.name, err, c.LogDir())
		}
	}
	c.stamp("cluster ready", "kubeconfig", c.Kubeconfig(), "node", c.o.NodeName)
	return nil
}
