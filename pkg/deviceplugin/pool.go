package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"strings"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/envvar"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Mount is a per-allocation directory to bind into the container.
type Mount struct {
	HostPath      string
	ContainerPath string
	// Env holds the backend's extra container variables (the hardware
	// backend's EF_VI_CLUSTER_SOCKET and EFVI_CLUSTER).
	Env map[string]string
}

// PrepareRequest describes one new allocation.
type PrepareRequest struct {
	Pool, Resource string
	AllocationID   string
	Devices        []string
}

// BrokerProvider makes the per-allocation broker endpoint. Prepare returns
// the host directory that will hold the broker socket envvar.SocketName;
// ContainerPath is filled in by the caller when empty. Release tears it down
// when the allocation is freed (idempotent).
type BrokerProvider interface {
	Prepare(ctx context.Context, req PrepareRequest) (Mount, error)
	Release(ctx context.Context, pool, allocationID string) error
}

// Hardware device nodes. SFCChar is required by hardware pools; the Onload
// nodes are passed when the node has them.
const (
	SFCChar     = "/dev/sfc_char"
	Onload      = "/dev/onload"
	OnloadEpoll = "/dev/onload_epoll"
)

// PoolBackend is the Backend of one pool: slots from the allocator, the
// broker directory from a BrokerProvider, the payload per this package's doc.
type PoolBackend struct {
	Pool     string
	Resource string // <prefix>/<pool>
	Hardware bool
	Alloc    *allocator.Allocator
	Broker   BrokerProvider
	// DevFS is the node's root filesystem ("dev/sfc_char" is looked up in
	// it); tests pass a fstest.MapFS.
	DevFS fs.FS
	// CDI, when set, makes Allocate answer with a CDI device.
	CDI *CDIWriter
	// Reclaim is called when Allocate meets a slot held by another
	// allocation: it reconciles with the kubelet, treating devices as free
	// unless the kubelet still reports them held. May be nil.
	Reclaim func(ctx context.Context, devices []string) error
	Logger  *slog.Logger
}

var _ Backend = (*PoolBackend)(nil)

// Devices implements Backend.
func (b *PoolBackend) Devices() []Device {
	ds := b.Alloc.Devices(b.Pool)
	out := make([]Device, len(ds))
	for i, d := range ds {
		out[i] = Device{ID: d.ID, NUMANode: d.NUMANode, Healthy: d.Healthy}
	}
	return out
}

// Preferred implements Backend.
func (b *PoolBackend) Preferred(available, mustInclude []string, size int) ([]string, error) {
	return b.Alloc.Preferred(b.Pool, available, mustInclude, size)
}

// Allocate implements Backend.
func (b *PoolBackend) Allocate(ctx context.Context, devices []string) (*pluginapi.ContainerAllocateResponse, func(), error) {
	var nodes []*pluginapi.DeviceSpec
	if b.Hardware {
		var err error
		if nodes, err = b.deviceNodes(); err != nil {
			return nil, nil, err
		}
	}
	al, err := b.Alloc.Allocate(b.Pool, devices)
	var inUse *allocator.InUseError
	if errors.As(err, &inUse) && b.Reclaim != nil {
		if rerr := b.Reclaim(ctx, devices); rerr != nil {
			return nil, nil, fmt.Errorf("%w (reconcile with the kubelet failed: %v)", err, rerr)
		}
		al, err = b.Alloc.Allocate(b.Pool, devices)
	}
	if err != nil {
		return nil, nil, err
	}
	release := func() {
		if err := b.Alloc.Release(al.ID); err != nil && b.Logger != nil {
			b.Logger.Error("release allocation", "allocation", al.ID, "err", err)
		}
	}
	m, err := b.Broker.Prepare(ctx, PrepareRequest{Pool: b.Pool, Resource: b.Resource, AllocationID: al.ID, Devices: devices})
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("prepare broker for allocation %s: %w", al.ID, err)
	}
	if m.ContainerPath == "" {
		m.ContainerPath = envvar.ContainerDir(b.Pool)
	}
	undo := func() {
		if err := b.Broker.Release(context.WithoutCancel(ctx), b.Pool, al.ID); err != nil && b.Logger != nil {
			b.Logger.Error("release broker", "allocation", al.ID, "err", err)
		}
		if b.CDI != nil {
			if err := b.CDI.Remove(b.Resource, al.ID); err != nil && b.Logger != nil {
				b.Logger.Error("remove CDI spec", "allocation", al.ID, "err", err)
			}
		}
		release()
	}
	sock := path.Join(m.ContainerPath, envvar.SocketName)
	ids := strings.Join(devices, ",")
	envs := map[string]string{
		envvar.Socket:             sock,
		envvar.Devices:            ids,
		envvar.SocketVar(b.Pool):  sock,
		envvar.DevicesVar(b.Pool): ids,
	}
	for k, v := range m.Env {
		envs[k] = v
	}
	mounts := []*pluginapi.Mount{{HostPath: m.HostPath, ContainerPath: m.ContainerPath}}
	if b.CDI != nil {
		name, err := b.CDI.Write(b.Resource, al.ID, envs, mounts, nodes)
		if err != nil {
			undo()
			return nil, nil, err
		}
		return &pluginapi.ContainerAllocateResponse{CdiDevices: []*pluginapi.CDIDevice{{Name: name}}}, undo, nil
	}
	return &pluginapi.ContainerAllocateResponse{Envs: envs, Mounts: mounts, Devices: nodes}, undo, nil
}

// deviceNodes returns /dev/sfc_char (required) and the Onload nodes present.
func (b *PoolBackend) deviceNodes() ([]*pluginapi.DeviceSpec, error) {
	have := func(p string) bool {
		_, err := fs.Stat(b.DevFS, strings.TrimPrefix(p, "/"))
		return err == nil
	}
	if b.DevFS == nil || !have(SFCChar) {
		return nil, fmt.Errorf("hardware pool %s: %s not found on the node: load the Solarflare char driver (Onload's sfc_char module, `modprobe sfc_char`) or use a software pool", b.Pool, SFCChar)
	}
	nodes := []*pluginapi.DeviceSpec{{ContainerPath: SFCChar, HostPath: SFCChar, Permissions: "rw"}}
	for _, n := range []string{Onload, OnloadEpoll} {
		if have(n) {
			nodes = append(nodes, &pluginapi.DeviceSpec{ContainerPath: n, HostPath: n, Permissions: "rw"})
		}
	}
	return nodes, nil
}

// HardwareReady reports whether the node has what hardware pools need.
func HardwareReady(devFS fs.FS) bool {
	if devFS == nil {
		return false
	}
	_, err := fs.Stat(devFS, strings.TrimPrefix(SFCChar, "/"))
	return err == nil
}
