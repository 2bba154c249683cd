package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// frameConn reads and writes whole frames, with fds, on a SOCK_SEQPACKET
// unix socket. recvmsg uses MSG_CMSG_CLOEXEC so received fds are close-on-exec
// from the moment they exist. Deadlines and Close on the underlying conn
// interrupt a blocked read or write.
type frameConn struct {
	c   *net.UnixConn
	raw syscall.RawConn
	buf []byte
	oob []byte
}

func newFrameConn(c *net.UnixConn) (*frameConn, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("broker socket: %w", err)
	}
	return &frameConn{
		c:   c,
		raw: raw,
		buf: make([]byte, MaxMessageSize),
		oob: make([]byte, unix.CmsgSpace(4*MaxFDs)),
	}, nil
}

// recvFlags reports what recvmsg said about a frame.
type recvFlags struct {
	truncated  bool // MSG_TRUNC: the frame was longer than MaxMessageSize
	ctruncated bool // MSG_CTRUNC: more fds than MaxFDs (the kernel dropped the rest)
}

// read returns the next frame (valid until the next read) and the fds that
// came with it; the caller owns the fds. A zero-length record reads as EOF,
// which is how SOCK_SEQPACKET reports an orderly close.
func (f *frameConn) read() ([]byte, []int, recvFlags, error) {
	var n, oobn, mflags int
	var rerr error
	err := f.raw.Read(func(fd uintptr) bool {
		for {
			n, oobn, mflags, _, rerr = unix.Recvmsg(int(fd), f.buf, f.oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				break
			}
		}
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	var fds []int
	if oobn > 0 {
		fds = parseRights(f.oob[:oobn])
	}
	if err != nil {
		closeFDs(fds)
		return nil, nil, recvFlags{}, err
	}
	fl := recvFlags{truncated: mflags&unix.MSG_TRUNC != 0, ctruncated: mflags&unix.MSG_CTRUNC != 0}
	if n == 0 && oobn == 0 && !fl.truncated {
		return nil, nil, fl, io.EOF
	}
	return f.buf[:n], fds, fl, nil
}

// parseRights extracts the fds of every SCM_RIGHTS message in oob.
func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

// write sends one frame with fds (which stay owned by the caller).
func (f *frameConn) write(frame []byte, fds []int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	var werr error
	err := f.raw.Write(func(fd uintptr) bool {
		for {
			_, werr = unix.SendmsgN(int(fd), frame, oob, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
			if werr != unix.EINTR {
				break
			}
		}
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	return err
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// isClosed reports errors that mean the peer or we closed the connection.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}
