package efvi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The ef_vi cluster protocol, client side, in pure Go: the same bytes
// libciul's ef_pd_alloc_by_name sends (src/lib/ciul/ef_app_cluster.c), so
// an untagged build can tell a pod on a hardware pool exactly what the agent
// offers before saying the hardware backend is not built in, and the
// handshake is testable without Onload. The tagged build lets libciul do the
// handshake itself (it keeps the socket for the life of the PD).
const (
	clusterVersionReq   = 0
	clusterVersionResp  = 1
	clusterAllocReq     = 2
	clusterAllocResp    = 3
	clusterProtoVersion = 1
	// Reply buffers as libciul sizes them (it NUL-terminates at buf[rc]).
	clusterVersionReplyMax = 16
	clusterAllocReplyMax   = 128
)

// ClusterGrant is the agent's answer to a cluster allocation: the PD and VI
// set resources it allocated on the port, the port, and its driver handle
// (an open /dev/sfc_char) on which they live. The caller owns Handle.
type ClusterGrant struct {
	PDResource    uint32
	VISetResource uint32
	Interface     string
	Handle        *os.File
}

// ClusterError is a failure the agent reported with an errno (ENOENT: no
// such cluster; EPERM: refused by policy; ...).
type ClusterError struct {
	Name  string
	Errno syscall.Errno
}

func (e *ClusterError) Error() string {
	return fmt.Sprintf("agent refused cluster %q: %v", e.Name, e.Errno)
}

// Unwrap lets errors.Is match the errno.
func (e *ClusterError) Unwrap() error { return e.Errno }

// ClusterHandshake does what ef_pd_alloc_by_name does against the daemon at
// socket: version check, then allocate cluster name ("[N@]name"; the
// channel prefix is stripped, as libciul does) with pdFlags. It returns the
// grant with the passed driver handle. The connection is closed on return:
// the agent sees EOF, as from a client whose PD was freed.
func ClusterHandshake(ctx context.Context, socket, name string, pdFlags uint32) (ClusterGrant, error) {
	if err := checkClusterName(name); err != nil {
		return ClusterGrant{}, err
	}
	if i := bytes.IndexByte([]byte(name), '@'); i >= 0 {
		name = name[i+1:]
	}
	uc, done, err := clusterDialVersion(ctx, socket)
	if err != nil {
		return ClusterGrant{}, err
	}
	defer done()
	buf := make([]byte, clusterAllocReplyMax)
	oob := make([]byte, unix.CmsgSpace(4))
	if _, err := fmt.Fprintf(uc, "%d %s %d\n", clusterAllocReq, name, int32(pdFlags)); err != nil {
		return ClusterGrant{}, fmt.Errorf("cluster handshake on %s: send alloc: %w", socket, err)
	}
	n, oobn, _, _, err := uc.ReadMsgUnix(buf[:clusterAllocReplyMax-1], oob)
	if err != nil {
		return ClusterGrant{}, fmt.Errorf("cluster handshake on %s: alloc reply: %w", socket, err)
	}
	fd, ferr := parseRights(oob[:oobn])
	g, err := parseClusterAllocReply(buf[:n])
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		var ce *ClusterError
		if errors.As(err, &ce) {
			ce.Name = name
		}
		return ClusterGrant{}, fmt.Errorf("cluster handshake on %s: %w", socket, err)
	}
	if fd < 0 {
		return ClusterGrant{}, fmt.Errorf("cluster handshake on %s: the success reply carried no driver handle (SCM_RIGHTS fd): %v", socket, ferr)
	}
	g.Handle = os.NewFile(uintptr(fd), "efvi-cluster-dh")
	return g, nil
}

// ClusterProbe connects to the daemon at socket and checks the protocol
// version, allocating nothing: it tells "no agent here" and "another
// protocol" apart before libciul, which silently falls back to a local
// interface when it cannot reach the daemon.
func ClusterProbe(ctx context.Context, socket string) error {
	_, done, err := clusterDialVersion(ctx, socket)
	if err != nil {
		return err
	}
	done()
	return nil
}

// clusterDialVersion connects and does the version step; done closes.
func clusterDialVersion(ctx context.Context, socket string) (*net.UnixConn, func(), error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the agent's cluster socket %s: %w", socket, err)
	}
	uc := c.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	} else {
		_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Unix(1, 0)) })
	done := func() { stop(); uc.Close() }
	buf := make([]byte, clusterVersionReplyMax)
	if _, err := fmt.Fprintf(uc, "%d %d\n", clusterVersionReq, clusterProtoVersion); err != nil {
		done()
		return nil, nil, fmt.Errorf("cluster handshake on %s: send version: %w", socket, err)
	}
	n, _, _, _, err := uc.ReadMsgUnix(buf[:clusterVersionReplyMax-1], nil)
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("cluster handshake on %s: version reply: %w", socket, err)
	}
	if err := parseClusterVersionReply(buf[:n]); err != nil {
		done()
		return nil, nil, fmt.Errorf("cluster handshake on %s: %w", socket, err)
	}
	return uc, done, nil
}

// parseClusterVersionReply accepts "1 0\n"; "1 1" is a version mismatch
// (libciul: -EBADRQC); anything else is a protocol error (-EIO).
func parseClusterVersionReply(b []byte) error {
	f := bytes.Fields(b)
	if len(f) == 2 && string(f[0]) == strconv.Itoa(clusterVersionResp) {
		switch string(f[1]) {
		case "0":
			return nil
		case "1":
			return fmt.Errorf("the agent speaks another cluster protocol version than %d: %w", clusterProtoVersion, unix.EBADRQC)
		}
	}
	return fmt.Errorf("unexpected version reply %q (want \"1 0\"): %w", clip(b), unix.EIO)
}

// parseClusterAllocReply reads "3 0 <pd_res> <viset_res> <ifname>" or
// "3 1 <errno> 0 0" (the failure is returned as a *ClusterError).
func parseClusterAllocReply(b []byte) (ClusterGrant, error) {
	f := bytes.Fields(b)
	bad := func(why string) (ClusterGrant, error) {
		return ClusterGrant{}, fmt.Errorf("unexpected alloc reply %q (%s): %w", clip(b), why, unix.EIO)
	}
	if len(f) != 5 || string(f[0]) != strconv.Itoa(clusterAllocResp) {
		return bad("want 5 fields starting with 3")
	}
	a, err1 := strconv.ParseUint(string(f[2]), 10, 32)
	v, err2 := strconv.ParseUint(string(f[3]), 10, 32)
	if err1 != nil || err2 != nil {
		return bad("fields 3 and 4 must be unsigned numbers")
	}
	switch string(f[1]) {
	case "0":
		if len(f[4]) >= unix.IFNAMSIZ {
			return bad("interface name too long")
		}
		return ClusterGrant{PDResource: uint32(a), VISetResource: uint32(v), Interface: string(f[4])}, nil
	case "1":
		if a == 0 || a > 4095 {
			return bad("errno out of range")
		}
		return ClusterGrant{}, &ClusterError{Errno: syscall.Errno(a)}
	}
	return bad("status must be 0 or 1")
}

// parseRights returns the one fd an SCM_RIGHTS message carries, or -1.
// Extra fds are closed.
func parseRights(oob []byte) (int, error) {
	if len(oob) == 0 {
		return -1, errors.New("no control message")
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return -1, err
	}
	fd := -1
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, f := range fds {
			if fd < 0 {
				fd = f
			} else {
				unix.Close(f)
			}
		}
	}
	if fd < 0 {
		return -1, errors.New("no SCM_RIGHTS fd")
	}
	return fd, nil
}

func clip(b []byte) []byte {
	if len(b) > 40 {
		return b[:40]
	}
	return b
}
