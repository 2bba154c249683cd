package softvi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/kube-efvi/kube-efvi/pkg/broker"
	"github.com/kube-efvi/kube-efvi/pkg/kubeletcheckpoint"
)

// KubepodsPeer authorizes the peers of one allocation's broker socket: a
// process of the pod that holds the allocation, and nothing else. The
// peer's pod is read from its cgroup (/proc/<pid>/cgroup names the pod's
// UID, for the cgroupfs and the systemd drivers alike); the allocation's pod
// from PodUID (the kubelet's device checkpoint, see [CheckpointOwner]). A
// peer of another pod, or of no pod, is refused with EPERM and reported to
// Refused (the agent records an event on the owning pod). HostUIDs are the
// explicit exception for node tools (--broker-host-uids).
//
// The agent needs hostPID to see peers' pids, or SO_PEERCRED reports pid 0
// and every peer is refused.
type KubepodsPeer struct {
	ProcRoot string
	HostUIDs []uint32 // also admitted from outside the pod (node tools)
	// PodUID returns the UID of the pod holding the allocation. Nil admits
	// a process of any pod (the check before allocations had owners).
	PodUID func(ctx context.Context) (string, error)
	// Refused, if set, is told each refused peer and the owning pod's UID
	// (empty when unknown).
	Refused func(ctx context.Context, p broker.Peer, podUID string, err error)
}

// Authorize implements broker.Authorizer.
func (k KubepodsPeer) Authorize(ctx context.Context, p broker.Peer) error {
	if slices.Contains(k.HostUIDs, p.UID) {
		return nil
	}
	owner, err := k.authorize(ctx, p)
	if err != nil && k.Refused != nil {
		k.Refused(ctx, p, owner, err)
	}
	return err
}

func (k KubepodsPeer) authorize(ctx context.Context, p broker.Peer) (string, error) {
	if p.PID <= 0 {
		return "", broker.Errorf(syscall.EPERM, "peer pid unknown to the agent: run the agent with hostPID so it can check which pod connects")
	}
	b, err := os.ReadFile(filepath.Join(k.ProcRoot, strconv.Itoa(int(p.PID)), "cgroup"))
	if err != nil {
		return "", broker.Errorf(syscall.EPERM, "peer pid %d: read its cgroup: %v", p.PID, err)
	}
	cg := strings.TrimSpace(string(b))
	peerPod, inPod := PodUIDFromCgroup(cg)
	if !strings.Contains(cg, "kubepods") || !inPod {
		return "", broker.Errorf(syscall.EPERM, "peer pid %d (uid %d) is not in a Kubernetes pod (cgroup %q): only the allocation's pod may use this socket (node tools: the agent's --broker-host-uids)", p.PID, p.UID, clip(cg))
	}
	if k.PodUID == nil {
		return "", nil
	}
	owner, err := k.PodUID(ctx)
	if err != nil {
		return "", broker.Errorf(syscall.EPERM, "peer pid %d of pod %s: the allocation's pod is unknown: %v", p.PID, peerPod, err)
	}
	if owner != peerPod {
		return owner, broker.Errorf(syscall.EPERM, "peer pid %d (uid %d) runs in pod %s, but this socket belongs to pod %s's allocation", p.PID, p.UID, peerPod, owner)
	}
	return owner, nil
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// PodUIDFromCgroup finds the pod UID in the text of /proc/<pid>/cgroup:
// "/kubepods/besteffort/pod<uid>/<container>" (cgroupfs driver) or
// "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid
// with _ for ->.slice/cri-containerd-<id>.scope" (systemd driver); every
// hierarchy of cgroup v1 must agree.
func PodUIDFromCgroup(cgroup string) (string, bool) {
	uid := ""
	for _, line := range strings.Split(cgroup, "\n") {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, seg := range strings.Split(parts[2], "/") {
			u, ok := podSegment(seg)
			if !ok {
				continue
			}
			if uid != "" && uid != u {
				return "", false // two pods: not a pod's process
			}
			uid = u
		}
	}
	return uid, uid != ""
}

func podSegment(seg string) (string, bool) {
	var u string
	switch {
	case strings.HasPrefix(seg, "pod"): // cgroupfs
		u = seg[len("pod"):]
	case strings.HasPrefix(seg, "kubepods-") && strings.HasSuffix(seg, ".slice"): // systemd
		s := strings.TrimSuffix(seg, ".slice")
		i := strings.LastIndex(s, "-pod")
		if i < 0 {
			return "", false
		}
		u = strings.ReplaceAll(s[i+len("-pod"):], "_", "-")
	default:
		return "", false
	}
	if len(u) < 8 || len(u) > 64 {
		return "", false
	}
	for _, c := range u {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '-') {
			return "", false
		}
	}
	return strings.ToLower(u), true
}

// CheckpointOwner returns the UID of the pod holding every one of devices
// of resource, from the kubelet's device checkpoint at path (the kubelet
// writes it right after Allocate, before the pod's containers start).
func CheckpointOwner(path, resource string, devices []string) (string, error) {
	if len(devices) == 0 {
		return "", errors.New("allocation has no devices")
	}
	cp, err := kubeletcheckpoint.Read(path)
	if err != nil {
		return "", err
	}
	owner := ""
	for _, d := range devices {
		uid, ok := cp.Owner(resource, d)
		if !ok {
			return "", fmt.Errorf("the kubelet's device checkpoint has no pod holding %s %s (the pod is gone, or the kubelet has not recorded it yet)", resource, d)
		}
		if owner != "" && uid != owner {
			return "", fmt.Errorf("the kubelet's device checkpoint has the allocation's devices in pods %s and %s", owner, uid)
		}
		owner = uid
	}
	return strings.ToLower(owner), nil
}
