package broker

import (
	"errors"
	"fmt"
	"syscall"
)

// Error is an error carried by an ERROR reply: a Linux errno and a message.
// errors.Is(err, syscall.EPERM) works on it (it unwraps to its Errno).
type Error struct {
	Errno syscall.Errno
	Msg   string
}

// Errorf returns an *Error with errno and a formatted message.
func Errorf(errno syscall.Errno, format string, args ...any) *Error {
	return &Error{Errno: errno, Msg: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return e.Errno.Error()
	}
	return fmt.Sprintf("%s (%s)", e.Msg, errnoName(e.Errno))
}

// Unwrap returns the errno, so errors.Is(err, syscall.EEXIST) works.
func (e *Error) Unwrap() error { return e.Errno }

func errnoName(e syscall.Errno) string {
	return fmt.Sprintf("errno %d: %s", uint32(e), e.Error())
}

// ErrnoOf maps any error to the errno an ERROR reply carries: an *Error's
// errno, a wrapped syscall.Errno, or EIO for anything else.
func ErrnoOf(err error) syscall.Errno {
	var be *Error
	if errors.As(err, &be) && be.Errno != 0 {
		return be.Errno
	}
	var en syscall.Errno
	if errors.As(err, &en) && en != 0 && en <= maxErrno {
		return en
	}
	return syscall.EIO
}

// maxErrno bounds errno values on the wire (Linux MAX_ERRNO).
const maxErrno = 4095

// ErrorReply is the payload of an ERROR frame.
//
//	errno u32 (1..4095) | message str (0..MaxErrorMessage bytes)
type ErrorReply struct {
	Errno syscall.Errno
	Msg   string
}

// Type implements Message.
func (*ErrorReply) Type() MsgType { return TypeError }

// MarshalBinary implements Message.
func (m *ErrorReply) MarshalBinary() ([]byte, error) {
	if m.Errno == 0 || m.Errno > maxErrno {
		return nil, fmt.Errorf("encode ERROR: errno %d outside 1..%d", uint32(m.Errno), maxErrno)
	}
	if err := checkStr("ERROR", "message", m.Msg, 0, MaxErrorMessage); err != nil {
		return nil, err
	}
	var e enc
	e.u32(uint32(m.Errno))
	e.str(m.Msg)
	return e.b, nil
}

// UnmarshalBinary implements Message.
func (m *ErrorReply) UnmarshalBinary(p []byte) error {
	d := newDec("ERROR", p)
	errno := d.u32("errno")
	if d.err == nil && (errno == 0 || errno > maxErrno) {
		d.fail("errno", "%d outside 1..%d", errno, maxErrno)
	}
	msg := d.str("message", 0, MaxErrorMessage)
	if err := d.end(); err != nil {
		return err
	}
	*m = ErrorReply{Errno: syscall.Errno(errno), Msg: msg}
	return nil
}

// Err returns the reply as an *Error.
func (m *ErrorReply) Err() *Error { return &Error{Errno: m.Errno, Msg: m.Msg} }

// errorReplyFor builds an ERROR payload for err, truncating the message to fit.
func errorReplyFor(err error) *ErrorReply {
	msg := err.Error()
	var be *Error
	if errors.As(err, &be) && err == error(be) {
		msg = be.Msg
	}
	msg = sanitize(msg, MaxErrorMessage)
	return &ErrorReply{Errno: ErrnoOf(err), Msg: msg}
}

// sanitize makes s a valid text field of at most max bytes.
func sanitize(s string, max int) string {
	b := make([]rune, 0, len(s))
	n := 0
	for _, r := range s {
		if r == 0xFFFD || r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			r = '?'
		}
		l := len(string(r))
		if n+l > max {
			break
		}
		n += l
		b = append(b, r)
	}
	return string(b)
}
