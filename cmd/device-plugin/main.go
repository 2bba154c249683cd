// Command efvi-agent is kube-efvi's node agent. It owns everything privileged
// on a node: port discovery, the kubelet device-plugin servers that advertise
// VI capacity, VI slot allocation, the per-allocation broker sockets that hand
// VIs to unprivileged pods, the filter tables and the software data plane.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-efvi/kube-efvi/pkg/agent"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/hwvi"
	"github.com/kube-efvi/kube-efvi/pkg/introspect"
	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
	"github.com/kube-efvi/kube-efvi/pkg/kubeletcheckpoint"
	"github.com/kube-efvi/kube-efvi/pkg/metrics"
	"github.com/kube-efvi/kube-efvi/pkg/softvi"
)

const usage = `efvi-agent: the kube-efvi node agent.

Usage:
  efvi-agent [flags]

What it does today:
  - Reads the pool config (YAML, strict; --config), and reloads it when the
    file changes (ConfigMap updates included) or on SIGHUP, keeping
    allocations. Without a config, every Solarflare port (driver sfc,
    sfc_efct, xilinx_efct) becomes a hardware pool named after it.
  - Discovers ports from sysfs (driver, PCI address, NUMA node, MAC, link
    state) and rescans on netlink link events.
  - Runs one kubelet device plugin per pool (resource <prefix>/<pool>, devices
    <ifname>-vi<N> with NUMA topology), re-registering within milliseconds of a
    kubelet restart. Link down or a missing /dev/sfc_char → Unhealthy, and
    Healthy again on recovery.
  - Allocate: records the VI slots (checkpoint in the state dir), creates a
    per-allocation directory mounted at /run/efvi/<pool>/ (the VI broker
    listens on broker.sock there), sets
    EFVI_SOCKET/EFVI_DEVICES and EFVI_SOCKET_<POOL>/EFVI_DEVICES_<POOL>, passes
    /dev/sfc_char (+ /dev/onload*) for hardware pools, or a CDI device when
    CDI is enabled.
  - Reconciles allocations with the kubelet PodResources API: slots of deleted
    pods come back; a slot is never issued twice.
  - Serves Prometheus metrics on /metrics (and /healthz).
  - Hardware pools (Solarflare ports; agent built with -tags onload): acts as
    the ef_vi cluster daemon per allocation — a PD and VI set on the port, the
    cluster protocol on cluster.sock (EF_VI_CLUSTER_SOCKET, EFVI_CLUSTER in the
    container) — and never puts the software data plane on such a port.
    Without the hardware backend or /dev/sfc_char their slots are Unhealthy
    and the log and efvi_pool_unavailable say why.
  - Software pools: puts the XDP data plane on each port and serves each
    allocation's broker socket, which hands the pod its VI (an AF_XDP socket
    and its packet memory) as file descriptors; keeps the filter tables.
  - Serves the agent API efvi-cni calls (--cni-socket): installs the filters a
    pod declares (annotation efvi.io/filters) for its own IPs, and removes
    them on DEL or when the pod is gone (watch of this node's pods).
  - Serves diagnostics for efvictl (--efvictl-socket).

Signals: SIGTERM/SIGINT shut down gracefully; SIGHUP reloads the config.

Flags (override the config file's agent settings):
`

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("efvi-agent", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	var (
		cfgPath      = fs.String("config", "", "pool config file (YAML); empty: one hardware pool per Solarflare port")
		kubeletDir   = fs.String("kubelet-dir", config.DefaultPluginDir, "kubelet device-plugins directory (kubelet.sock)")
		podResources = fs.String("pod-resources-socket", config.DefaultPodResourcesSocket, "kubelet PodResources API socket")
		stateDir     = fs.String("state-dir", config.DefaultStateDir, "directory for the allocation checkpoint")
		brokerDir    = fs.String("broker-dir", config.DefaultBrokerDir, "directory for per-allocation broker endpoints")
		cdiEnabled   = fs.Bool("cdi", false, "answer Allocate with CDI devices (the runtime must support CDI)")
		cdiDir       = fs.String("cdi-dir", config.DefaultCDIDir, "CDI spec directory")
		metricsAddr  = fs.String("metrics-address", config.DefaultMetricsAddress, `metrics listen address, or "off"`)
		sysfs        = fs.String("sysfs", "/sys", "sysfs mount point")
		logLevel     = fs.String("log-level", "info", "debug, info, warn or error")
		logFormat    = fs.String("log-format", "json", "json or text")
		diagSocket   = fs.String("efvictl-socket", api.DefaultSocket, `diagnostics socket for efvictl (root only), or "off"`)
		cniSocket    = fs.String("cni-socket", cniapi.DefaultSocket, `agent API socket for efvi-cni, or "off"`)
		kubeconfig   = fs.String("kubeconfig", "", "kubeconfig for the API server (empty: in-cluster service account)")
		nodeName     = fs.String("node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME, else the hostname)")
		cleanupRef   = fs.String("cleanup-unless-daemonset", "", "NAMESPACE/NAME of the agent's DaemonSet: at exit, when it is gone (helm uninstall), remove VI veths, XDP/TC programs, pins and state from the node; empty: always keep them")
		hostUIDs     = fs.String("broker-host-uids", "", "comma-separated uids that may use allocation sockets from outside a pod (node tools); default: pods only")
	)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "efvi-agent: unexpected arguments %q (flags only; see --help)\n", fs.Args())
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "efvi-agent: --log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(*logFormat) {
	case "json":
		h = slog.NewJSONHandler(os.Stderr, hopts)
	case "text":
		h = slog.NewTextHandler(os.Stderr, hopts)
	default:
		fmt.Fprintf(os.Stderr, "efvi-agent: --log-format %q: want json or text\n", *logFormat)
		return 2
	}
	log := slog.New(h)

	// Only flags given on the command line override the file.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	override := func(a *config.Agent) {
		if set["kubelet-dir"] {
			a.PluginDir = *kubeletDir
		}
		if set["pod-resources-socket"] {
			a.PodResourcesSocket = *podResources
		}
		if set["state-dir"] {
			a.StateDir = *stateDir
		}
		if set["broker-dir"] {
			a.BrokerDir = *brokerDir
		}
		if set["cdi"] {
			a.CDI.Enabled = *cdiEnabled
		}
		if set["cdi-dir"] {
			a.CDI.Dir = *cdiDir
		}
		if set["metrics-address"] {
			a.MetricsAddress = *metricsAddr
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The software VI backend: data planes on software pools' ports and the
	// per-allocation broker sockets that hand VIs to pods.
	uids, err := parseUIDs(*hostUIDs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "efvi-agent: --broker-host-uids: %v\n", err)
		return 2
	}
	// main resolves the settings (file + flags) and builds each pool kind's
	// backend from them; the agent routes each pool to its backend.
	cfg, _, err := agent.LoadConfig(*cfgPath, override)
	if err != nil {
		log.Error("efvi-agent failed to start", "err", err)
		return 1
	}
	settings := cfg.Agent
	allocRoot := filepath.Join(settings.BrokerDir, "alloc")
	sw := softvi.New(softvi.Config{Logger: log, HostUIDs: uids, BrokerRoot: allocRoot, StateDir: filepath.Join(settings.StateDir, "ports"),
		KubeletCheckpoint: kubeletcheckpoint.PathIn(settings.PluginDir)}) // the device checkpoint: whose allocation a socket is
	// The hardware backend: the agent as the ef_vi cluster daemon on
	// Solarflare ports (libciul, build tag onload). Never the software
	// data plane on a hardware pool's port.
	nic, notBuilt := hardwareNIC()
	hw := hwvi.New(hwvi.Config{BrokerRoot: allocRoot, NIC: nic, NotBuilt: notBuilt, Logger: log})
	defer func() {
		if err := hw.Close(); err != nil {
			log.Error("close hardware backend", "err", err)
		}
	}()
	release, intf := hw.Version()
	if nic != nil {
		log.Info("hardware backend: Onload ef_vi library", "onloadVersion", release, "onloadInterface", intf)
	} else {
		log.Info("hardware backend unavailable: hardware pools advertise Unhealthy", "reason", notBuilt)
	}
	// Uninstall or restart? The watch of the agent's DaemonSet decides at exit.
	rel := watchRelease(ctx, log, cniOptions{kubeconfig: *kubeconfig}, *cleanupRef, settings.StateDir)
	defer func() {
		detachOrDestroy(log, rel, &settings, sw)
	}()
	// Diagnostics for efvictl (ports, VIs, filters, per-VI counters and
	// metrics, capture) on a root-only unix socket.
	pods := &podNames{reg: sw.Registry()}
	diag := introspect.New(introspect.Config{Registry: sw.Registry(), PodNamer: pods.name, Logger: log})
	defer diag.Close()
	if *diagSocket != "off" {
		if ds, err := introspect.Listen(*diagSocket, diag); err != nil {
			log.Error("efvictl diagnostics unavailable", "err", err)
		} else {
			go func() { _ = ds.Serve(ctx) }()
		}
	}
	ag := agent.New(agent.Options{
		ConfigPath: *cfgPath, Override: override, SysfsRoot: *sysfs, Logger: log,
		Backends: map[config.Backend]agent.Backend{config.Software: sw, config.Hardware: hw},
		Collectors: []prometheus.Collector{metrics.NewVITrafficCollector(diag.VISamples),
			metrics.NewAllocationCollector(diag.AllocationSamples), metrics.NewOnloadInfo(release, intf)},
	})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: reloading the config")
				ag.Reload()
			}
		}
	}()
	if *nodeName == "" {
		*nodeName, _ = os.Hostname()
	}
	go func() {
		o := cniOptions{socket: *cniSocket, kubeconfig: *kubeconfig, node: *nodeName}
		if err := serveCNI(ctx, log, o, settings, ag, sw, pods); err != nil {
			log.Error("CNI agent API unavailable: pods' declared filters will not be installed", "err", err)
		}
	}()
	if err := ag.Run(ctx); err != nil {
		log.Error("efvi-agent failed to start", "err", err)
		return 1
	}
	return 0
}

// parseUIDs parses "0,1000" into uids.
func parseUIDs(s string) ([]uint32, error) {
	var out []uint32
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%q is not a uid (want e.g. 0,1000)", f)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}
