package attach

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/atomicfile"
)

// Record is what the agent remembers about one attachment, so DEL, GC and
// the pod reconcile know whose filters they remove, across agent restarts.
type Record struct {
	Key          string       `json:"key"` // container id + "/" + ifname
	Network      string       `json:"network"`
	PodNamespace string       `json:"podNamespace,omitempty"`
	PodName      string       `json:"podName,omitempty"`
	PodUID       string       `json:"podUID,omitempty"`
	IPs          []netip.Addr `json:"ips,omitempty"`
	Port         string       `json:"port,omitempty"`    // port holding the filters
	Devices      []string     `json:"devices,omitempty"` // the allocation's devices (the filters are on the first)
	Filters      []string     `json:"filters,omitempty"` // canonical specs
	Created      time.Time    `json:"created"`
}

// stateVersion is the state file's format version.
const stateVersion = 1

type stateFile struct {
	Version int                `json:"version"`
	Records map[string]*Record `json:"records"`
}

// loadState reads the records at path; a missing file is no records.
func loadState(path string) (map[string]*Record, error) {
	recs := map[string]*Record{}
	if path == "" {
		return recs, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return recs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read attachment state: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("attachment state %s is corrupt (%w); move it away to start empty (GC and the pod reconcile then only see the ports' own records)", path, err)
	}
	if f.Version != stateVersion {
		return nil, fmt.Errorf("attachment state %s has version %d, this agent reads %d", path, f.Version, stateVersion)
	}
	for k, r := range f.Records {
		if r == nil || r.Key != k {
			return nil, fmt.Errorf("attachment state %s: record %q is malformed", path, k)
		}
		recs[k] = r
	}
	return recs, nil
}

// saveState replaces the file atomically. It is not fsynced: a power loss
// may lose the last change, which GC and the pod reconcile then repair.
func saveState(path string, recs map[string]*Record) error {
	if path == "" {
		return nil
	}
	b, err := json.Marshal(stateFile{Version: stateVersion, Records: recs})
	if err != nil {
		return fmt.Errorf("encode attachment state: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600, false); err != nil {
		return fmt.Errorf("write attachment state: %w", err)
	}
	return nil
}
