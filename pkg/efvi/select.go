package efvi

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kube-efvi/kube-efvi/pkg/cluster"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/envvar"
)

// Environment variables that tell the SDK which backend an allocation is on.
// The agent sets them in the container: EnvSocket for a software pool;
// EnvClusterSocket and EnvClusterName for a hardware pool (the agent is then
// the ef_vi cluster daemon of the allocation, and EnvClusterSocket is the
// very variable libciul's ef_pd_alloc_by_name reads).
const (
	EnvClusterSocket = envvar.ClusterSocket // "EF_VI_CLUSTER_SOCKET"
	EnvClusterName   = envvar.ClusterName   // "EFVI_CLUSTER": the pool's name
)

// BackendKind says which backend serves an allocation.
type BackendKind int

// Backend kinds.
const (
	// BackendSoftware is the agent's AF_XDP software backend (broker socket).
	BackendSoftware BackendKind = iota + 1
	// BackendHardware is a Solarflare/AMD NIC through libciul, with the
	// agent as the ef_vi cluster daemon.
	BackendHardware
)

func (k BackendKind) String() string {
	switch k {
	case BackendSoftware:
		return "software"
	case BackendHardware:
		return "hardware"
	}
	return fmt.Sprintf("BackendKind(%d)", int(k))
}

// Selection is the backend an allocation's environment names, with the
// endpoints the SDK needs to reach the agent.
type Selection struct {
	Kind BackendKind
	// BrokerSocket is the software backend's per-allocation socket
	// ($EFVI_SOCKET). A hardware allocation may have one too; then the
	// SDK sends filter requests there.
	BrokerSocket string
	// ClusterSocket is the agent's cluster-protocol socket
	// ($EF_VI_CLUSTER_SOCKET); ClusterName the name to pass to
	// ef_pd_alloc_by_name ($EFVI_CLUSTER, "[N@]name").
	ClusterSocket string
	ClusterName   string
}

// SelectBackend reads the allocation's environment through getenv (use
// os.Getenv) and says which backend it is on: a hardware pool's cluster
// socket wins over a broker socket (a hardware allocation may carry both;
// the broker socket then only takes filter requests); otherwise the broker
// socket means the software backend. It is an error when neither is set
// or when the hardware variables are only half there.
func SelectBackend(getenv func(string) string) (Selection, error) {
	s := Selection{
		BrokerSocket:  strings.TrimSpace(getenv(EnvSocket)),
		ClusterSocket: strings.TrimSpace(getenv(EnvClusterSocket)),
		ClusterName:   strings.TrimSpace(getenv(EnvClusterName)),
	}
	switch {
	case s.ClusterSocket != "" && s.ClusterName == "":
		return s, fmt.Errorf("efvi: $%s is set (%s) but $%s is not: a hardware allocation needs the cluster name to pass to ef_pd_alloc_by_name; the agent sets both", EnvClusterSocket, s.ClusterSocket, EnvClusterName)
	case s.ClusterSocket == "" && s.ClusterName != "":
		return s, fmt.Errorf("efvi: $%s is set (%q) but $%s is not: a hardware allocation needs the agent's cluster socket; the agent sets both", EnvClusterName, s.ClusterName, EnvClusterSocket)
	case s.ClusterSocket != "":
		if err := checkClusterName(s.ClusterName); err != nil {
			return s, fmt.Errorf("efvi: $%s: %w", EnvClusterName, err)
		}
		s.Kind = BackendHardware
	case s.BrokerSocket != "":
		s.Kind = BackendSoftware
	default:
		return s, fmt.Errorf("efvi: no agent socket: neither $%s (software pool) nor $%s + $%s (hardware pool) is set (is the container requesting an efvi.io resource?)", EnvSocket, EnvClusterSocket, EnvClusterName)
	}
	return s, nil
}

// checkClusterName accepts what ef_pd_alloc_by_name sends on one protocol
// line: "[N@]name", name non-empty, no white space (the daemon splits on
// it), at most maxClusterName bytes.
func checkClusterName(name string) error {
	base := name
	if i := strings.IndexByte(name, '@'); i >= 0 {
		for _, c := range name[:i] {
			if c < '0' || c > '9' {
				return fmt.Errorf("cluster name %q: the part before '@' must be a channel index (digits)", name)
			}
		}
		base = name[i+1:]
	}
	if base == "" {
		return fmt.Errorf("cluster name %q is empty", name)
	}
	return cluster.ValidName(base)
}

// ErrHardwareNotBuilt is what DialAgent returns on a hardware allocation in
// a binary built without the hardware backend.
var ErrHardwareNotBuilt = errors.New("efvi: this binary was built without the hardware (libciul) backend: rebuild it with `-tags onload` and cgo against the node's Onload installation (make build-onload ONLOAD_PREFIX=/usr), or request a software pool")
