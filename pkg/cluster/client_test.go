package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// testClient speaks the client side of the protocol as libciul's
// ef_app_cluster.c does, written from its facts: one request per send, one
// recvmsg per reply into 16 (version) or 128 (allocate) bytes, the reply
// NUL-terminated at buf[rc] (so rc must stay below the buffer size), and an
// SCM_RIGHTS fd taken from the allocate reply.
type testClient struct {
	c *net.UnixConn
}

func dialTest(path string) (*testClient, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return &testClient{c: c}, nil
}

func (t *testClient) Close() error { return t.c.Close() }

func (t *testClient) send(s string) error {
	n, err := t.c.Write([]byte(s))
	if err == nil && n != len(s) {
		err = fmt.Errorf("short send %d/%d", n, len(s))
	}
	return err
}

// recv does one recvmsg into a buffer of size bufSize, as the client does.
func (t *testClient) recv(bufSize int) (string, int, error) {
	buf := make([]byte, bufSize)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := t.c.ReadMsgUnix(buf, oob)
	if err != nil {
		return "", -1, err
	}
	if n == 0 {
		return "", -1, errors.New("unexpected EOF")
	}
	if n >= bufSize {
		return "", -1, fmt.Errorf("reply of %d bytes leaves no room for the client's NUL in its %d-byte buffer", n, bufSize)
	}
	fd := -1
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return "", -1, err
		}
		for _, m := range msgs {
			fds, err := unix.ParseUnixRights(&m)
			if err != nil {
				return "", -1, err
			}
			for i, f := range fds {
				if i == 0 && fd < 0 {
					fd = f
				} else {
					_ = unix.Close(f)
				}
			}
		}
	}
	return string(buf[:n]), fd, nil
}

// version runs the version step; nil means the server said "1 0".
func (t *testClient) version(v int) error {
	if err := t.send(fmt.Sprintf("%d %d\n", 0, v)); err != nil {
		return err
	}
	r, fd, err := t.recv(versionReplyBuf)
	if err != nil {
		return err
	}
	if fd >= 0 {
		_ = unix.Close(fd)
		return errors.New("fd attached to a version reply")
	}
	var reply, result int
	if n, _ := fmt.Sscanf(r, "%d %d", &reply, &result); n == 2 && reply == 1 {
		switch result {
		case 0:
			return nil
		case 1:
			return syscall.EBADRQC
		}
	}
	return fmt.Errorf("%w: version reply %q", syscall.EIO, r)
}

type allocResult struct {
	pdRes, visetRes int
	ifname          string
	fd              int
}

// alloc runs the allocate step. A failure reply comes back as its errno.
func (t *testClient) alloc(name string, flags int) (allocResult, error) {
	if err := t.send(fmt.Sprintf("%d %s %d\n", 2, name, flags)); err != nil {
		return allocResult{}, err
	}
	r, fd, err := t.recv(allocReplyBuf)
	if err != nil {
		return allocResult{}, err
	}
	return parseAllocReply(r, fd)
}

func parseAllocReply(r string, fd int) (allocResult, error) {
	var r0, r1, r2, r3 int
	var ifname string
	n, _ := fmt.Sscanf(r, "%d %d %d %d %s", &r0, &r1, &r2, &r3, &ifname)
	if n == 5 && r0 == 3 {
		switch r1 {
		case 0:
			if fd < 0 {
				return allocResult{}, errors.New("success reply without an fd")
			}
			return allocResult{pdRes: r2, visetRes: r3, ifname: ifname, fd: fd}, nil
		case 1:
			if fd >= 0 {
				_ = unix.Close(fd)
				return allocResult{}, errors.New("fd attached to a failure reply")
			}
			return allocResult{}, syscall.Errno(r2)
		}
	}
	if fd >= 0 {
		_ = unix.Close(fd)
	}
	return allocResult{}, fmt.Errorf("%w: allocate reply %q", syscall.EIO, r)
}

// expectErrnoReply reads one reply and wants the "3 1 <errno> 0 0\n" form.
func (t *testClient) expectErrnoReply(want syscall.Errno) error {
	r, fd, err := t.recv(allocReplyBuf)
	if err != nil {
		return err
	}
	if fd >= 0 {
		_ = unix.Close(fd)
		return errors.New("fd attached to an error reply")
	}
	wantS := "3 1 " + strconv.Itoa(int(want)) + " 0 0\n"
	if r != wantS {
		return fmt.Errorf("reply %q, want %q (%v)", r, wantS, want)
	}
	return nil
}

// expectClosed wants EOF (or a reset, when the server closed with unread data).
func (t *testClient) expectClosed() error {
	var b [64]byte
	n, err := t.c.Read(b[:])
	if n > 0 {
		return fmt.Errorf("unexpected %q after the reply", b[:n])
	}
	if err == nil || !(errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "EOF")) {
		return fmt.Errorf("connection not closed by the server: %v", err)
	}
	return nil
}
