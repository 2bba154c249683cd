package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// kubeletRoot is the kubelet's state directory.
const kubeletRoot = "/var/lib/kubelet"

// Down stops everything Up started and removes the cluster's state, keeping
// the logs and the binary cache. It is safe to call when nothing runs.
func (c *Cluster) Down(ctx context.Context) error {
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// No controller may recreate pods while they are being deleted.
	keep(c.stop(ctx, "kube-controller-manager", 10*time.Second))
	keep(c.stop(ctx, "kube-scheduler", 10*time.Second))
	if c.running("kube-apiserver") != 0 && c.running("kubelet") != 0 {
		// Let the kubelet tear pods down properly (CNI DEL, volume unmounts).
		if _, err := c.kubectl(ctx, "delete", "pods", "--all", "-A", "--grace-period=2", "--wait=true", "--timeout=90s"); err != nil {
			c.log.Warn("deleting pods through the kubelet", "err", err)
		}
	}
	keep(c.stop(ctx, "kubelet", 30*time.Second))
	keep(c.stop(ctx, "kube-apiserver", 15*time.Second))
	keep(c.stop(ctx, "etcd", 15*time.Second))
	if c.running("containerd") != 0 {
		keep(c.removeContainers(ctx))
	}
	keep(c.stop(ctx, "containerd", 15*time.Second))
	podsClean := true
	if err := unmountUnder(kubeletRoot + "/pods"); err != nil {
		keep(err)
		podsClean = false
	}
	keep(removeCNINetns())
	if l, err := netlink.LinkByName(Bridge); err == nil {
		keep(netlink.LinkDel(l))
	}
	for _, p := range []string{
		filepath.Join(c.o.CNIConfDir, ConflistName),
		filepath.Join("/var/lib/cni/networks", NetworkName),
		filepath.Join(c.o.WorkDir, "etcd"),
	} {
		keep(os.RemoveAll(p))
	}
	// Only with every pod volume unmounted: RemoveAll would follow a
	// leftover bind mount into host directories.
	if n, err := mountsUnder(kubeletRoot + "/pods"); podsClean && err == nil && n == 0 {
		keep(os.RemoveAll(filepath.Join(kubeletRoot, "pods")))
	}
	return errors.Join(errs...)
}

// removeContainers kills and deletes every container in the k8s.io namespace.
func (c *Cluster) removeContainers(ctx context.Context) error {
	out, err := run(ctx, "", nil, "ctr", "-n", "k8s.io", "tasks", "ls", "-q")
	if err != nil {
		return err
	}
	for _, id := range strings.Fields(string(out)) {
		_, _ = run(ctx, "", nil, "ctr", "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
	}
	out, err = run(ctx, "", nil, "ctr", "-n", "k8s.io", "containers", "ls", "-q")
	if err != nil {
		return err
	}
	for _, id := range strings.Fields(string(out)) {
		_ = poll(ctx, 5*time.Second, func() error {
			_, err := run(ctx, "", nil, "ctr", "-n", "k8s.io", "tasks", "delete", "-f", id)
			if err != nil && strings.Contains(err.Error(), "not found") {
				return nil
			}
			return err
		})
		if _, err := run(ctx, "", nil, "ctr", "-n", "k8s.io", "containers", "delete", id); err != nil {
			c.log.Warn("delete container", "id", id, "err", err)
		}
	}
	return nil
}

// mountsUnder counts the mount points below dir.
func mountsUnder(dir string) (int, error) {
	mps, err := listMountsUnder(dir)
	return len(mps), err
}

func listMountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 && strings.HasPrefix(fs[4], dir+"/") {
			mps = append(mps, unescapeMount(fs[4]))
		}
	}
	return mps, sc.Err()
}

// unmountUnder lazily unmounts every mount point below dir, deepest first.
func unmountUnder(dir string) error {
	mps, err := listMountsUnder(dir)
	if err != nil {
		return err
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	var errs []error
	for _, m := range mps {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount decodes mountinfo's octal escapes (\040 for space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, d := range s[i+1 : i+4] {
				if d < '0' || d > '7' {
					ok = false
					break
				}
				v = v*8 + byte(d-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCNINetns removes the pod network namespaces containerd left
// (/run/netns/cni-*), which only exist when a pod was not torn down.
func removeCNINetns() error {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "cni-") {
			continue
		}
		p := filepath.Join("/run/netns", e.Name())
		_ = unix.Unmount(p, unix.MNT_DETACH)
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
