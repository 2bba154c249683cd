// Package hwvi is the node agent's backend for hardware pools (Solarflare /
// AMD ports driven by Onload's sfc_char): the agent acts as the ef_vi
// cluster daemon, one per allocation, and never puts the software data plane
// on the port.
//
// For each allocation, Prepare
//  1. creates the allocation's directory (pkg/allocdir);
//  2. asks the [NIC] (libciul behind the onload build tag, package
//     pkg/hwvi/onload) for a driver handle, a protection domain on the port —
//     in the agent's (host) network namespace, where the port exists — and a
//     VI set sized to the allocation's VI count;
//  3. serves the ef_vi cluster protocol (pkg/cluster) on cluster.sock in that
//     directory, so that ef_pd_alloc_by_name($EFVI_CLUSTER) in the pod gets
//     the PD and VI set (the driver handle is passed as an fd);
//  4. returns the variables EF_VI_CLUSTER_SOCKET and EFVI_CLUSTER for the
//     container (the device plugin also passes /dev/sfc_char: the pod
//     allocates its VI from the VI set through its own handle).
//
// Release stops the socket and frees the VI set, PD and handle; resources a
// pod still holds through the passed fd live until it closes it (the kernel
// counts references per open file).
//
// Agent restart: re-create, not re-adopt. ef_vi resources belong to the
// open /dev/sfc_char file they were allocated on; a restarted agent has no
// handle on its predecessor's and libciul offers no way to attach to them by
// id. So restored allocations get a fresh PD and VI set and a fresh socket
// (for the pod's next ef_pd_alloc_by_name); a running pod keeps using the
// PD, VI set and filters it already holds until it exits.
//
// Trust: any holder of /dev/sfc_char can add IP filters for any address, so
// on hardware pools the NIC cannot enforce "a pod steers only its own IPs":
// hardware pools are for trusted namespaces.
package hwvi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/allocdir"
	"github.com/kube-efvi/kube-efvi/pkg/cluster"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/envvar"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
)

// NIC is the hardware operations, one small interface: the real one is
// cgo over libciul (pkg/hwvi/onload, build tag onload).
type NIC interface {
	// Version is the Onload release and driver interface (EFCH_INTF_VER)
	// of the linked libciul: a pod's libciul must match it.
	Version() (release, intf string)
	// Open opens a driver handle, allocates a PD on the port (ifindex in
	// the agent's network namespace) and a VI set of vis VIs from it.
	Open(ifname string, ifindex, vis int) (VISet, error)
}

// VISet is one allocation's driver handle, PD and VI set.
type VISet interface {
	// FD is the open /dev/sfc_char handle, passed to the pod.
	FD() int
	PDResID() uint32
	VISetResID() uint32
	// AddFilter installs a filter on the VI set (the NIC spreads matching
	// packets over the set's VIs); it returns a handle for RemoveFilter.
	AddFilter(f Filter) (FilterID, error)
	RemoveFilter(id FilterID) error
	// Close frees the VI set, the PD and the handle.
	Close() error
}

// Filter is an IPv4 local (destination) address filter.
type Filter struct {
	Proto     string // "udp" or "tcp"
	LocalIP   net.IP
	LocalPort uint16
}

// FilterID names an installed filter.
type FilterID struct{ Type, Index int }

// Config configures the backend.
type Config struct {
	// BrokerRoot holds the per-allocation directories (<brokerDir>/alloc).
	BrokerRoot string
	// NIC is the hardware; nil means this agent was built without it, and
	// NotBuilt says why (shown in health, logs and Allocate errors).
	NIC      NIC
	NotBuilt string
	// DevFS is the node's root filesystem, for /dev/sfc_char (os.DirFS("/")).
	DevFS fs.FS
	// InterfaceIndex resolves a port's ifindex (default net.InterfaceByName).
	InterfaceIndex func(name string) (int, error)
	Logger         *slog.Logger
}

// Backend is the hardware backend.
type Backend struct {
	cfg  Config
	log  *slog.Logger
	dirs allocdir.Dirs

	mu     sync.Mutex
	served map[string]*served // by allocation id
}

type served struct {
	set  VISet
	srv  *cluster.Server
	done chan struct{}
}

// New returns a hardware backend.
func New(cfg Config) *Backend {
	if cfg.DevFS == nil {
		cfg.DevFS = os.DirFS("/")
	}
	if cfg.InterfaceIndex == nil {
		cfg.InterfaceIndex = func(name string) (int, error) {
			ifc, err := net.InterfaceByName(name)
			if err != nil {
				return 0, err
			}
			return ifc.Index, nil
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NIC == nil && cfg.NotBuilt == "" {
		cfg.NotBuilt = "no hardware operations configured"
	}
	return &Backend{cfg: cfg, log: cfg.Logger.With("component", "hwvi"), dirs: allocdir.Dirs{Root: cfg.BrokerRoot}, served: map[string]*served{}}
}

// Version returns the linked Onload release and interface ("" without a NIC).
func (b *Backend) Version() (release, intf string) {
	if b.cfg.NIC == nil {
		return "", ""
	}
	return b.cfg.NIC.Version()
}

// ready says why the backend cannot serve, or nil.
func (b *Backend) ready() error {
	if b.cfg.NIC == nil {
		return fmt.Errorf("hardware backend unavailable: %s", b.cfg.NotBuilt)
	}
	if _, err := fs.Stat(b.cfg.DevFS, strings.TrimPrefix(deviceplugin.SFCChar, "/")); err != nil {
		return fmt.Errorf("%s not found: load Onload's sfc_char driver (install Onload on the node, `modprobe sfc_char`)", deviceplugin.SFCChar)
	}
	return nil
}

// PortHealth implements the agent's Backend.
func (b *Backend) PortHealth(_ config.Pool, p discovery.Port) error {
	if !p.Solarflare() {
		return fmt.Errorf("driver %q is not a Solarflare driver (sfc, sfc_efct, xilinx_efct)", p.Driver)
	}
	return b.ready()
}

// OnPoolPorts implements the agent's Backend: nothing to attach, a hardware
// port keeps its kernel path and gets no XDP program.
func (b *Backend) OnPoolPorts(config.Pool, []discovery.Port) {}

// Prepare implements deviceplugin.BrokerProvider.
func (b *Backend) Prepare(ctx context.Context, req deviceplugin.PrepareRequest) (deviceplugin.Mount, error) {
	if err := b.ready(); err != nil {
		return deviceplugin.Mount{}, fmt.Errorf("hardware pool %s: %w", req.Pool, err)
	}
	if err := cluster.ValidName(req.Pool); err != nil {
		return deviceplugin.Mount{}, fmt.Errorf("hardware pool %s: %w", req.Pool, err)
	}
	port, err := allocator.DevicesPort(req.Devices, "a PD lives on one port")
	if err != nil {
		return deviceplugin.Mount{}, fmt.Errorf("allocation %s: %w", req.AllocationID, err)
	}
	m, err := b.dirs.Prepare(ctx, req)
	if err != nil {
		return m, err
	}
	if err := os.Chmod(m.HostPath, 0o711); err != nil {
		return m, fmt.Errorf("allocation %s: %w", req.AllocationID, err)
	}
	m.ContainerPath = envvar.ContainerDir(req.Pool)
	m.Env = map[string]string{
		envvar.ClusterSocket: path.Join(m.ContainerPath, envvar.ClusterSocketName),
		envvar.ClusterName:   req.Pool,
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.served[req.AllocationID]; ok {
		return m, nil
	}
	ifindex, err := b.cfg.InterfaceIndex(port)
	if err != nil {
		return m, fmt.Errorf("allocation %s: port %s: %w", req.AllocationID, port, err)
	}
	set, err := b.cfg.NIC.Open(port, ifindex, len(req.Devices))
	if err != nil {
		return m, fmt.Errorf("allocation %s: PD and VI set on %s: %w", req.AllocationID, port, err)
	}
	log := b.log.With("allocation", req.AllocationID, "pool", req.Pool, "port", port)
	grant := cluster.Grant{PDResID: set.PDResID(), VISetResID: set.VISetResID(), IfName: port, FD: set.FD()}
	srv, err := cluster.Listen(cluster.Config{
		Path: filepath.Join(m.HostPath, envvar.ClusterSocketName), Mode: 0o666, Logger: log,
		Allocator: cluster.AllocatorFunc(func(_ context.Context, r cluster.Request) (cluster.Grant, error) {
			if r.Cluster != req.Pool {
				return cluster.Grant{}, cluster.ErrNoCluster
			}
			return grant, nil
		}),
	})
	if err != nil {
		_ = set.Close()
		return m, fmt.Errorf("allocation %s: %w", req.AllocationID, err)
	}
	s := &served{set: set, srv: srv, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := srv.Serve(context.Background()); err != nil {
			log.Error("cluster socket stopped", "err", err)
		}
	}()
	b.served[req.AllocationID] = s
	log.Info("hardware allocation served", "pd_res", set.PDResID(), "viset_res", set.VISetResID(), "vis", len(req.Devices))
	return m, nil
}

// Release implements deviceplugin.BrokerProvider.
func (b *Backend) Release(ctx context.Context, pool, id string) error {
	b.mu.Lock()
	s := b.served[id]
	delete(b.served, id)
	b.mu.Unlock()
	var errs []error
	if s != nil {
		errs = append(errs, s.srv.Close())
		<-s.done
		errs = append(errs, s.set.Close())
	}
	errs = append(errs, b.dirs.Release(ctx, pool, id))
	return errors.Join(errs...)
}

// Close stops every socket and frees every VI set (agent exit: pods keep
// what they hold through their fds).
func (b *Backend) Close() error {
	b.mu.Lock()
	all := b.served
	b.served = map[string]*served{}
	b.mu.Unlock()
	var errs []error
	for _, s := range all {
		errs = append(errs, s.srv.Close())
		<-s.done
		errs = append(errs, s.set.Close())
	}
	return errors.Join(errs...)
}
