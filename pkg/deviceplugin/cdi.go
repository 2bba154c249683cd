package deviceplugin

import (
	"fmt"
	"os"
	"sort"
	"strings"

	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// CDIWriter writes one transient CDI spec file per allocation: kind
// "<resourcePrefix>/<pool>", one device named after the allocation ID.
type CDIWriter struct {
	dir   string
	cache *cdi.Cache
}

// NewCDIWriter returns a writer for the CDI spec directory dir (created if
// missing).
func NewCDIWriter(dir string) (*CDIWriter, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("CDI spec dir: %w", err)
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI cache %s: %w", dir, err)
	}
	return &CDIWriter{dir: dir, cache: cache}, nil
}

// Dir returns the spec directory.
func (w *CDIWriter) Dir() string { return w.dir }

func splitResource(resource string) (vendor, class string, err error) {
	vendor, class, ok := strings.Cut(resource, "/")
	if !ok {
		return "", "", fmt.Errorf("resource %q is not <prefix>/<pool>", resource)
	}
	return vendor, class, nil
}

// SpecName is the file name (without extension) of an allocation's spec.
func SpecName(resource, allocationID string) (string, error) {
	vendor, class, err := splitResource(resource)
	if err != nil {
		return "", err
	}
	return cdi.GenerateTransientSpecName(vendor, class, allocationID), nil
}

// Write writes the spec of one allocation and returns the fully qualified
// CDI device name for the Allocate response.
func (w *CDIWriter) Write(resource, allocationID string, envs map[string]string, mounts []*pluginapi.Mount, nodes []*pluginapi.DeviceSpec) (string, error) {
	vendor, class, err := splitResource(resource)
	if err != nil {
		return "", err
	}
	var edits cdispec.ContainerEdits
	keys := make([]string, 0, len(envs))
	for k := range envs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		edits.Env = append(edits.Env, k+"="+envs[k])
	}
	for _, m := range mounts {
		edits.Mounts = append(edits.Mounts, &cdispec.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath,
			Type: "bind", Options: []string{"rbind", "rw", "nosuid", "nodev"}})
	}
	for _, n := range nodes {
		edits.DeviceNodes = append(edits.DeviceNodes, &cdispec.DeviceNode{Path: n.ContainerPath, HostPath: n.HostPath, Permissions: n.Permissions})
	}
	spec := &cdispec.Spec{Kind: resource, Devices: []cdispec.Device{{Name: allocationID, ContainerEdits: edits}}}
	v, err := cdispec.MinimumRequiredVersion(spec)
	if err != nil {
		return "", fmt.Errorf("CDI spec version: %w", err)
	}
	spec.Version = v
	name := cdi.GenerateTransientSpecName(vendor, class, allocationID) + ".json"
	if err := w.cache.WriteSpec(spec, name); err != nil {
		return "", fmt.Errorf("write CDI spec %s in %s: %w", name, w.dir, err)
	}
	return parser.QualifiedName(vendor, class, allocationID), nil
}

// Remove deletes an allocation's spec (a missing file is not an error).
func (w *CDIWriter) Remove(resource, allocationID string) error {
	name, err := SpecName(resource, allocationID)
	if err != nil {
		return err
	}
	if err := w.cache.RemoveSpec(name + ".json"); err != nil {
		return fmt.Errorf("remove CDI spec %s: %w", name, err)
	}
	return nil
}
