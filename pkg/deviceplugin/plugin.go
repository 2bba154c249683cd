// Package deviceplugin is the agent's kubelet face: one device-plugin gRPC
// server (k8s.io/kubelet deviceplugin v1beta1) per VI pool, registered with
// the kubelet and re-registered when the kubelet restarts, plus the Allocate
// payload that hands a container its VIs.
//
// # Servers and registration
//
// Each [Plugin] serves on a unix socket "efvi-<pool>.sock" in the kubelet's
// device-plugins directory. The [Manager] watches that directory with
// fsnotify: when kubelet.sock is created (the kubelet restarted; it has also
// deleted every plugin socket) or a plugin's own socket disappears, the
// plugin's server is restarted on a fresh socket and registered again at
// once — no polling, so re-registration takes milliseconds. Allocations are
// kept by the allocator across all of this.
//
// # Allocate payload
//
// For every container request the pool's [PoolBackend] records the slots in
// the allocator, asks the [BrokerProvider] for a per-allocation directory
// (which will hold the broker socket "broker.sock") and answers with:
//   - a mount of that directory at /run/efvi/<pool>/ (distinct per pool);
//   - env EFVI_SOCKET=/run/efvi/<pool>/broker.sock and EFVI_DEVICES=<ids,
//     comma-separated>, plus the per-pool EFVI_SOCKET_<POOL> and
//     EFVI_DEVICES_<POOL> (see package envvar for the names and for how a
//     client picks a pool when a container has several);
//   - for hardware pools the device nodes /dev/sfc_char and, when present on
//     the node, /dev/onload and /dev/onload_epoll;
//   - with CDI enabled, instead of the above: the CDI device
//     "<prefix>/<pool>=<allocation-id>" whose transient spec file (written
//     into the CDI directory, removed when the allocation is freed) carries
//     the same mount, env and device nodes.
//
// When a container requests several pools, the kubelet merges the plain
// EFVI_SOCKET/EFVI_DEVICES of the pools in an unspecified order (it iterates
// a map), so only the per-pool variables are exact then; envvar.Resolve
// applies the documented rule (the alphabetically first pool).
package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Device is one advertised device.
type Device struct {
	ID       string
	NUMANode int // -1: unknown
	Healthy  bool
}

// Backend answers a plugin's RPCs for one pool.
type Backend interface {
	// Devices returns the devices to advertise.
	Devices() []Device
	// Preferred implements GetPreferredAllocation for one container.
	Preferred(available, mustInclude []string, size int) ([]string, error)
	// Allocate implements Allocate for one container. undo reverses it when
	// a later container of the same request fails.
	Allocate(ctx context.Context, devices []string) (resp *pluginapi.ContainerAllocateResponse, undo func(), err error)
}

// Observer is told about registrations and allocations (metrics).
type Observer interface {
	Registered(pool string, reregistration bool, err error)
	Allocated(pool string, took time.Duration, err error)
}

// SocketName is the plugin socket for pool.
func SocketName(pool string) string { return "efvi-" + pool + ".sock" }

// Plugin is one pool's device-plugin server.
type Plugin struct {
	pluginapi.UnimplementedDevicePluginServer

	pool, resource string
	dir            string
	backend        Backend
	log            *slog.Logger
	obs            Observer

	mu      sync.Mutex
	server  *grpc.Server
	stop    chan struct{} // closed when the current server stops
	changed chan struct{} // closed and replaced by Notify
	running bool
}

// NewPlugin returns a plugin for pool (advertised as resource), serving in
// dir (the kubelet device-plugins directory). obs and log may be nil.
func NewPlugin(pool, resource, dir string, backend Backend, obs Observer, log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{pool: pool, resource: resource, dir: dir, backend: backend, obs: obs,
		log: log.With("pool", pool, "resource", resource), changed: make(chan struct{})}
}

// Pool returns the pool name.
func (p *Plugin) Pool() string { return p.pool }

// Resource returns the resource name.
func (p *Plugin) Resource() string { return p.resource }

// SocketPath is where the plugin serves.
func (p *Plugin) SocketPath() string { return filepath.Join(p.dir, SocketName(p.pool)) }

// Notify tells ListAndWatch streams that devices or health may have changed.
func (p *Plugin) Notify() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// Start (re)starts the server on a fresh socket.
func (p *Plugin) Start() error {
	p.Stop()
	path := p.SocketPath()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path) // SOCK_CLOEXEC: Go sets it
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	p.mu.Lock()
	p.server, p.stop, p.running = srv, make(chan struct{}), true
	p.mu.Unlock()
	go func() {
		if err := srv.Serve(lis); err != nil {
			p.log.Error("device plugin server stopped", "err", err)
		}
	}()
	return nil
}

// Stop stops the server, ends its streams and removes its socket.
func (p *Plugin) Stop() {
	p.mu.Lock()
	srv, stop, running := p.server, p.stop, p.running
	p.server, p.running = nil, false
	p.mu.Unlock()
	if !running {
		return
	}
	close(stop)
	srv.Stop()
	if err := os.Remove(p.SocketPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Warn("remove plugin socket", "err", err)
	}
}

// Running reports whether the server is up and its socket exists.
func (p *Plugin) Running() bool {
	p.mu.Lock()
	running := p.running
	p.mu.Unlock()
	if !running {
		return false
	}
	_, err := os.Stat(p.SocketPath())
	return err == nil
}

// Register registers the plugin with the kubelet at kubeletSocket.
func (p *Plugin) Register(ctx context.Context, kubeletSocket string) error {
	conn, err := grpc.NewClient("unix:"+kubeletSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("kubelet client %s: %w", kubeletSocket, err)
	}
	defer conn.Close()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     SocketName(p.pool),
		ResourceName: p.resource,
		Options:      p.options(),
	})
	if err != nil {
		return fmt.Errorf("register %s with the kubelet at %s: %w", p.resource, kubeletSocket, err)
	}
	return nil
}

func (p *Plugin) options() *pluginapi.DevicePluginOptions {
	return &pluginapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}
}

// GetDevicePluginOptions implements DevicePluginServer.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return p.options(), nil
}

func toAPI(devs []Device) []*pluginapi.Device {
	out := make([]*pluginapi.Device, len(devs))
	for i, d := range devs {
		h := pluginapi.Healthy
		if !d.Healthy {
			h = pluginapi.Unhealthy
		}
		out[i] = &pluginapi.Device{ID: d.ID, Health: h}
		if d.NUMANode >= 0 {
			out[i].Topology = &pluginapi.TopologyInfo{Nodes: []*pluginapi.NUMANode{{ID: int64(d.NUMANode)}}}
		}
	}
	return out
}

func sameDevices(a, b []Device) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ListAndWatch implements DevicePluginServer: the device list now, and again
// whenever it changes (health, capacity, ports), until the stream or the
// server ends.
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	p.mu.Lock()
	stop := p.stop
	p.mu.Unlock()
	var last []Device
	first := true
	for {
		p.mu.Lock()
		changed := p.changed
		p.mu.Unlock()
		devs := p.backend.Devices()
		if first || !sameDevices(devs, last) {
			if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: toAPI(devs)}); err != nil {
				return fmt.Errorf("ListAndWatch send: %w", err)
			}
			healthy := 0
			for _, d := range devs {
				if d.Healthy {
					healthy++
				}
			}
			p.log.Info("advertised devices", "devices", len(devs), "healthy", healthy)
			first, last = false, devs
		}
		select {
		case <-changed:
		case <-stop:
			return nil
		case <-s.Context().Done():
			return nil
		}
	}
}

// GetPreferredAllocation implements DevicePluginServer.
func (p *Plugin) GetPreferredAllocation(_ context.Context, req *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	resp := &pluginapi.PreferredAllocationResponse{}
	for _, cr := range req.GetContainerRequests() {
		ids, err := p.backend.Preferred(cr.GetAvailableDeviceIDs(), cr.GetMustIncludeDeviceIDs(), int(cr.GetAllocationSize()))
		if err != nil {
			return nil, fmt.Errorf("pool %s: preferred allocation: %w", p.pool, err)
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// Allocate implements DevicePluginServer. All containers of the request
// succeed or none keeps its slots.
func (p *Plugin) Allocate(ctx context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	start := time.Now()
	resp, err := p.allocate(ctx, req)
	if p.obs != nil {
		p.obs.Allocated(p.pool, time.Since(start), err)
	}
	if err != nil {
		p.log.Error("allocate failed", "err", err)
		return nil, err
	}
	return resp, nil
}

func (p *Plugin) allocate(ctx context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	var undos []func()
	for _, cr := range req.GetContainerRequests() {
		r, undo, err := p.backend.Allocate(ctx, cr.GetDevicesIds())
		if err != nil {
			for i := len(undos) - 1; i >= 0; i-- {
				undos[i]()
			}
			return nil, fmt.Errorf("pool %s: allocate %v: %w", p.pool, cr.GetDevicesIds(), err)
		}
		undos = append(undos, undo)
		resp.ContainerResponses = append(resp.ContainerResponses, r)
	}
	return resp, nil
}

// PreStartContainer implements DevicePluginServer (not requested: no-op).
func (p *Plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
