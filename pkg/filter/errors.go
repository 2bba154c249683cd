package filter

import (
	"fmt"
	"syscall"
)

// Error is a filter error with the errno ef_vi would return for the same
// request (as a negative return value in C), the spec it concerns and a
// human reason saying what was wrong and how to fix it.
//
// errors.Is(err, syscall.EEXIST) and friends work through Unwrap.
type Error struct {
	Errno  syscall.Errno // EPROTONOSUPPORT, EINVAL, EEXIST, EBUSY, EPERM or ENOENT
	Spec   string        // the spec text (canonical form, or the input for parse errors)
	Reason string        // what was wrong and how to fix it
}

func (e *Error) Error() string {
	if e.Spec == "" {
		return fmt.Sprintf("filter: %s (%s)", e.Reason, errnoName(e.Errno))
	}
	return fmt.Sprintf("filter %q: %s (%s)", e.Spec, e.Reason, errnoName(e.Errno))
}

// Unwrap returns the errno, so errors.Is(err, syscall.EINVAL) works.
func (e *Error) Unwrap() error { return e.Errno }

func errnoName(e syscall.Errno) string {
	var name string
	switch e {
	case syscall.EPROTONOSUPPORT:
		name = "EPROTONOSUPPORT"
	case syscall.EINVAL:
		name = "EINVAL"
	case syscall.EEXIST:
		name = "EEXIST"
	case syscall.EBUSY:
		name = "EBUSY"
	case syscall.EPERM:
		name = "EPERM"
	case syscall.ENOENT:
		name = "ENOENT"
	default:
		return e.Error()
	}
	return name + ": " + e.Error()
}

func newError(errno syscall.Errno, spec string, format string, args ...any) *Error {
	return &Error{Errno: errno, Spec: spec, Reason: fmt.Sprintf(format, args...)}
}
