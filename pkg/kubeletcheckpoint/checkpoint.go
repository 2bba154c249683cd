// Package kubeletcheckpoint reads the kubelet device manager's checkpoint,
// <kubelet root>/device-plugins/kubelet_internal_checkpoint: which pod (by
// UID) and container hold which device of which extended resource.
//
// It is the node's authoritative, agent-independent record of device
// assignments. The kubelet allocates devices when it admits a pod, writes
// the checkpoint right after each successful device-plugin Allocate (temp
// file + rename, so a reader sees the old or the new file), and only then
// creates the pod's sandbox, so the entry of a pod exists before its CNI ADD
// runs, and for as long as its containers may run. efvi-cni uses it to know,
// without the agent, that a pod holds no VI; the agent uses it to know which
// pod owns an allocation's broker socket.
//
// The format is the kubelet's (k8s.io/kubernetes pkg/kubelet/cm/devicemanager/
// checkpoint, "v2" since Kubernetes 1.20):
//
//	{"Data":{"PodDeviceEntries":[{"PodUID":"...","ContainerName":"...","ResourceName":"efvi.io/x",
//	  "DeviceIDs":{"-1":["eth1-vi0"]},"AllocResp":"..."}],"RegisteredDevices":{...}},"Checksum":123}
//
// The pre-1.20 "v1" form (DeviceIDs a plain list) is read too. The checksum
// (a hash of the kubelet's Go structs) is not verified: the file is replaced
// atomically, and a file that does not parse is an error, never "no devices".
package kubeletcheckpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// FileName is the checkpoint's name in the kubelet's device-plugins directory.
const FileName = "kubelet_internal_checkpoint"

// DefaultPath is the checkpoint of a kubelet with the default root directory.
const DefaultPath = "/var/lib/kubelet/device-plugins/" + FileName

// MaxSize bounds the file read (the kubelet's own AllocResp blobs make it a
// few KiB per container).
const MaxSize = 64 << 20

// Entry is one container's devices of one resource.
type Entry struct {
	PodUID        string
	ContainerName string
	ResourceName  string
	DeviceIDs     []string
}

// Checkpoint is the parsed file.
type Checkpoint struct {
	Entries []Entry
}

type fileEntry struct {
	PodUID        string
	ContainerName string
	ResourceName  string
	DeviceIDs     json.RawMessage
}

type file struct {
	Data *struct {
		PodDeviceEntries []fileEntry
	}
	// v1 had the entries at the top level.
	PodDeviceEntries []fileEntry
}

// Parse decodes a checkpoint.
func Parse(data []byte) (*Checkpoint, error) {
	var f file
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("kubelet device checkpoint is not valid JSON: %w", err)
	}
	entries := f.PodDeviceEntries
	if f.Data != nil {
		entries = f.Data.PodDeviceEntries
	} else if entries == nil && !bytes.Contains(data, []byte(`"PodDeviceEntries"`)) {
		return nil, errors.New(`kubelet device checkpoint has neither "Data" nor "PodDeviceEntries": not a device manager checkpoint`)
	}
	cp := &Checkpoint{Entries: make([]Entry, 0, len(entries))}
	for i, e := range entries {
		if e.PodUID == "" || e.ResourceName == "" {
			return nil, fmt.Errorf("kubelet device checkpoint: entry %d has no PodUID or ResourceName", i)
		}
		ids, err := deviceIDs(e.DeviceIDs)
		if err != nil {
			return nil, fmt.Errorf("kubelet device checkpoint: entry %d (pod %s, resource %s): %w", i, e.PodUID, e.ResourceName, err)
		}
		cp.Entries = append(cp.Entries, Entry{PodUID: e.PodUID, ContainerName: e.ContainerName, ResourceName: e.ResourceName, DeviceIDs: ids})
	}
	return cp, nil
}

// deviceIDs reads v2's {"<numa node>": [ids]} or v1's [ids].
func deviceIDs(raw json.RawMessage) ([]string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	if raw[0] == '[' {
		var ids []string
		if err := json.Unmarshal(raw, &ids); err != nil {
			return nil, fmt.Errorf("DeviceIDs: %w", err)
		}
		return ids, nil
	}
	var perNUMA map[string][]string
	if err := json.Unmarshal(raw, &perNUMA); err != nil {
		return nil, fmt.Errorf("DeviceIDs: %w", err)
	}
	var ids []string
	for _, l := range perNUMA {
		for _, id := range l {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Read reads and parses the checkpoint at path. A missing file is an error
// for which errors.Is(err, fs.ErrNotExist) holds.
func Read(path string) (*Checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kubelet device checkpoint: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("kubelet device checkpoint %s: %w", path, err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("kubelet device checkpoint %s is larger than %d bytes", path, MaxSize)
	}
	cp, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cp, nil
}

// PathIn returns the checkpoint's path in a kubelet device-plugins directory.
func PathIn(pluginDir string) string { return filepath.Join(pluginDir, FileName) }

// InDomain reports whether resource is an extended resource of domain, e.g.
// InDomain("efvi.io/fast", "efvi.io").
func InDomain(resource, domain string) bool {
	return domain != "" && strings.HasPrefix(resource, domain+"/") && len(resource) > len(domain)+1
}

// PodResources returns the resources of domain a pod holds devices of
// (sorted, once each); none means the pod holds no such device.
func (c *Checkpoint) PodResources(podUID, domain string) []string {
	var out []string
	for _, e := range c.Entries {
		if e.PodUID == podUID && len(e.DeviceIDs) > 0 && InDomain(e.ResourceName, domain) && !slices.Contains(out, e.ResourceName) {
			out = append(out, e.ResourceName)
		}
	}
	slices.Sort(out)
	return out
}

// Owner returns the UID of the pod holding device of resource.
func (c *Checkpoint) Owner(resource, device string) (string, bool) {
	for _, e := range c.Entries {
		if e.ResourceName == resource && slices.Contains(e.DeviceIDs, device) {
			return e.PodUID, true
		}
	}
	return "", false
}

// Marshal encodes entries in the kubelet's v2 format (checksum 0), for
// tests and tools that stand in for a kubelet.
func Marshal(entries []Entry) ([]byte, error) {
	type out struct {
		PodUID        string
		ContainerName string
		ResourceName  string
		DeviceIDs     map[string][]string
		AllocResp     []byte
	}
	d := struct {
		Data struct {
			PodDeviceEntries  []out
			RegisteredDevices map[string][]string
		}
		Checksum uint64
	}{}
	d.Data.PodDeviceEntries = []out{}
	d.Data.RegisteredDevices = map[string][]string{}
	for _, e := range entries {
		d.Data.PodDeviceEntries = append(d.Data.PodDeviceEntries, out{PodUID: e.PodUID, ContainerName: e.ContainerName,
			ResourceName: e.ResourceName, DeviceIDs: map[string][]string{"-1": e.DeviceIDs}})
		d.Data.RegisteredDevices[e.ResourceName] = append(d.Data.RegisteredDevices[e.ResourceName], e.DeviceIDs...)
	}
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("kubelet device checkpoint: %w", err)
	}
	return b, nil
}
