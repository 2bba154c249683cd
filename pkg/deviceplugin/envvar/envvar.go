// Package envvar names the environment variables the device plugin sets in
// containers, and resolves them on the client side. It has no dependencies,
// so the SDK can use it.
//
// For an allocation from pool P the container gets:
//
//	EFVI_SOCKET=/run/efvi/P/broker.sock   EFVI_SOCKET_<SUFFIX(P)>=same
//	EFVI_DEVICES=eth0-vi0,eth0-vi1        EFVI_DEVICES_<SUFFIX(P)>=same
//
// SUFFIX upper-cases the pool name and maps every character that is not a
// letter or digit to '_' (pool "fast-a" → EFVI_SOCKET_FAST_A). Pool names
// are lower-case DNS labels (letters, digits, '-'), so no two pools share a
// suffix.
//
// With several pools in one container the kubelet merges the plain variables
// in an unspecified order, so they are only trustworthy with one pool.
// [Resolve] therefore ignores them whenever a per-pool variable exists and
// picks the requested pool, or else the alphabetically first pool.
package envvar

import (
	"fmt"
	"sort"
	"strings"
)

// Variable names.
const (
	Socket  = "EFVI_SOCKET"
	Devices = "EFVI_DEVICES"
)

// ContainerDir is where pool's broker directory is mounted in a container.
func ContainerDir(pool string) string { return "/run/efvi/" + pool }

// SocketName is the broker socket's file name inside that directory.
const SocketName = "broker.sock"

// Hardware pools (the ef_vi cluster path): libciul's ef_pd_alloc_by_name()
// connects to $EF_VI_CLUSTER_SOCKET, and $EFVI_CLUSTER is the cluster name
// to pass it (the pool's name), e.g. EFVI_CLUSTER=nic and
// EF_VI_CLUSTER_SOCKET=/run/efvi/nic/cluster.sock.
const (
	ClusterSocket     = "EF_VI_CLUSTER_SOCKET"
	ClusterName       = "EFVI_CLUSTER"
	ClusterSocketName = "cluster.sock"
)

// Suffix maps a pool name to its variable suffix.
func Suffix(pool string) string {
	b := []byte(strings.ToUpper(pool))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// SocketVar is EFVI_SOCKET_<SUFFIX>.
func SocketVar(pool string) string { return Socket + "_" + Suffix(pool) }

// DevicesVar is EFVI_DEVICES_<SUFFIX>.
func DevicesVar(pool string) string { return Devices + "_" + Suffix(pool) }

// Allocation is what a container learned from its environment.
type Allocation struct {
	// Pool is the variable suffix of the pool (upper case), "" when only the
	// plain variables were set.
	Pool    string
	Socket  string
	Devices []string
}

// Resolve reads environ (as os.Environ returns it). pool "" means "the
// alphabetically first pool"; otherwise the named pool (any case, '-' or
// '_'). Plain variables are used only when no per-pool variable exists.
func Resolve(environ []string, pool string) (Allocation, error) {
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	var pools []string
	for k := range vars {
		if s, ok := strings.CutPrefix(k, Socket+"_"); ok && s != "" {
			pools = append(pools, s)
		}
	}
	sort.Strings(pools)
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, ",")
	}
	if len(pools) == 0 {
		if pool != "" {
			return Allocation{}, fmt.Errorf("pool %q requested but %s is not set: request the pool's resource in the container's resources.limits", pool, SocketVar(pool))
		}
		s, ok := vars[Socket]
		if !ok || s == "" {
			return Allocation{}, fmt.Errorf("%s is not set: the container has no kube-efvi allocation (request efvi.io/<pool> in resources.limits)", Socket)
		}
		return Allocation{Socket: s, Devices: split(vars[Devices])}, nil
	}
	want := pools[0]
	if pool != "" {
		want = Suffix(pool)
		if _, ok := vars[Socket+"_"+want]; !ok {
			return Allocation{}, fmt.Errorf("pool %q is not allocated to this container (allocated: %s)", pool, strings.Join(pools, ", "))
		}
	}
	return Allocation{Pool: want, Socket: vars[Socket+"_"+want], Devices: split(vars[Devices+"_"+want])}, nil
}
