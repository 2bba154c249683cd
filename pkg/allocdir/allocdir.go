// Package allocdir makes the per-allocation directories on the node:
// <root>/<pool>/<allocation-id>/, mounted into the allocation's container,
// where a backend puts the sockets it serves the allocation on (the broker
// socket, the ef_vi cluster socket) and allocation.json records what the
// directory is for. Every backend uses it; it depends on nothing but the
// device plugin's request types.
package allocdir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
)

// Dirs creates the per-allocation directory <root>/<pool>/<allocation-id>/
// (mode 0700; the backend chmods it when it serves a socket inside) and
// records the allocation in allocation.json there. Prepare is idempotent, so
// it is called again for restored allocations after a reboot emptied /run.
type Dirs struct {
	Root string // e.g. /run/efvi/alloc
}

// Record is the content of allocation.json.
type Record struct {
	AllocationID string   `json:"allocationID"`
	Pool         string   `json:"pool"`
	Resource     string   `json:"resource"`
	Devices      []string `json:"devices"`
}

var _ deviceplugin.BrokerProvider = Dirs{}

func (b Dirs) dir(pool, id string) (string, error) {
	if pool == "" || id == "" || strings.ContainsAny(pool+id, "/\\") || pool == ".." || id == ".." || pool == "." || id == "." {
		return "", fmt.Errorf("bad pool %q or allocation id %q", pool, id)
	}
	return filepath.Join(b.Root, pool, id), nil
}

// Prepare implements deviceplugin.BrokerProvider.
func (b Dirs) Prepare(_ context.Context, r deviceplugin.PrepareRequest) (deviceplugin.Mount, error) {
	d, err := b.dir(r.Pool, r.AllocationID)
	if err != nil {
		return deviceplugin.Mount{}, err
	}
	if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
		return deviceplugin.Mount{}, fmt.Errorf("broker dir: %w", err)
	}
	if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return deviceplugin.Mount{}, fmt.Errorf("broker dir: %w", err)
	}
	rec, err := json.Marshal(Record{AllocationID: r.AllocationID, Pool: r.Pool, Resource: r.Resource, Devices: r.Devices})
	if err != nil {
		return deviceplugin.Mount{}, err
	}
	// /run is a tmpfs on nodes: no fsync needed.
	if err := os.WriteFile(filepath.Join(d, "allocation.json"), rec, 0o600); err != nil {
		return deviceplugin.Mount{}, fmt.Errorf("broker record: %w", err)
	}
	return deviceplugin.Mount{HostPath: d}, nil
}

// Release implements deviceplugin.BrokerProvider.
func (b Dirs) Release(_ context.Context, pool, id string) error {
	d, err := b.dir(pool, id)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(d); err != nil {
		return fmt.Errorf("remove broker dir: %w", err)
	}
	return nil
}
