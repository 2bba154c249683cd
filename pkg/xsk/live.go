package xsk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Inode returns the inode number of a socket fd: the id sock_diag and
// /proc/<pid>/fd ("socket:[N]") know it by.
func Inode(f *os.File) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("fstat socket: %w", err)
	}
	return st.Ino, nil
}

// Prober tells which AF_XDP sockets still exist in the kernel, i.e. which
// have not been closed by every process holding them. It asks the kernel
// through sock_diag (NETLINK_SOCK_DIAG, family AF_XDP: the xsk_diag module,
// CONFIG_XDP_SOCKETS_DIAG), which sees every socket of the caller's network
// namespace, including ones only referenced by an fd in flight in a unix
// socket. Without xsk_diag it falls back to scanning /proc/*/fd, which
// misses fds in flight (documented in the caller).
type Prober struct {
	// ProcRoot is /proc (default).
	ProcRoot string
}

// ErrNoDiag says the kernel has no AF_XDP sock_diag handler.
var ErrNoDiag = errors.New("the kernel has no AF_XDP sock_diag (load xsk_diag, CONFIG_XDP_SOCKETS_DIAG)")

// Live reports, for each inode, whether that socket still exists.
func (p Prober) Live(inodes []uint64) (map[uint64]bool, error) {
	out := make(map[uint64]bool, len(inodes))
	if len(inodes) == 0 {
		return out, nil
	}
	all, err := DiagInodes()
	if errors.Is(err, ErrNoDiag) {
		all, err = p.procInodes(inodes)
	}
	if err != nil {
		return nil, err
	}
	for _, ino := range inodes {
		out[ino] = all[ino]
	}
	return out, nil
}

// procInodes scans every process's fds for the wanted socket inodes.
func (p Prober) procInodes(want []uint64) (map[uint64]bool, error) {
	root := p.ProcRoot
	if root == "" {
		root = "/proc"
	}
	wanted := make(map[uint64]bool, len(want))
	for _, w := range want {
		wanted[w] = true
	}
	pids, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("scan %s for socket holders: %w", root, err)
	}
	found := map[uint64]bool{}
	for _, d := range pids {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		fdDir := filepath.Join(root, d.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // exited, or not ours to read
		}
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64)
			if err == nil && wanted[ino] {
				found[ino] = true
			}
		}
	}
	return found, nil
}

// sock_diag for AF_XDP (include/uapi/linux/xdp_diag.h).
const (
	sockDiagByFamily = 20
	xdpShowInfo      = 1 << 0
	diagReqLen       = 24 // struct xdp_diag_req
	diagMsgLen       = 16 // struct xdp_diag_msg
)

// DiagInodes dumps the AF_XDP sockets of the caller's network namespace
// through sock_diag and returns their inodes, or ErrNoDiag.
func DiagInodes() (map[uint64]bool, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	req := make([]byte, unix.NLMSG_HDRLEN+diagReqLen)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	req[unix.NLMSG_HDRLEN] = unix.AF_XDP
	binary.NativeEndian.PutUint32(req[unix.NLMSG_HDRLEN+8:], xdpShowInfo)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag send: %w", err)
	}
	out := map[uint64]bool{}
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag receive: %w", err)
		}
		done, err := parseDiag(buf[:n], out)
		if err != nil || done {
			return out, err
		}
	}
}

// parseDiag adds the inodes of one netlink datagram's xdp_diag_msgs to out
// and reports whether the dump is complete.
func parseDiag(b []byte, out map[uint64]bool) (bool, error) {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return false, fmt.Errorf("sock_diag: %w", err)
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(m.Data) < 4 {
				return false, errors.New("sock_diag: short error message")
			}
			errno := -int32(binary.NativeEndian.Uint32(m.Data))
			switch e := unix.Errno(errno); e {
			case 0:
				return true, nil
			case unix.ENOENT, unix.EINVAL, unix.EOPNOTSUPP:
				return false, fmt.Errorf("%w: %v", ErrNoDiag, e)
			default:
				return false, fmt.Errorf("sock_diag AF_XDP: %w", e)
			}
		case sockDiagByFamily:
			if len(m.Data) < diagMsgLen || m.Data[0] != unix.AF_XDP {
				return false, fmt.Errorf("sock_diag: malformed AF_XDP reply (%d bytes)", len(m.Data))
			}
			out[uint64(binary.NativeEndian.Uint32(m.Data[4:]))] = true
		}
	}
	return false, nil
}
