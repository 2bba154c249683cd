package cniapi

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// CNI error codes. 1-99 are the CNI spec's; 100 and up are efvi-cni's own.
const (
	CodeTryAgainLater     uint = 11  // the agent, the kubelet or the API server is unavailable
	CodePluginUnavailable uint = 50  // STATUS: the agent cannot serve ADD
	CodeFilterRefused     uint = 100 // EPERM: the policy refuses a filter
	CodeFilterConflict    uint = 101 // EEXIST/EBUSY: another VI holds the filter
	CodeBadFilter         uint = 102 // EINVAL/EPROTONOSUPPORT: a malformed or invalid declaration
	CodeNotInstalled      uint = 103 // CHECK: a filter is missing (ENOENT)
	CodePodMismatch       uint = 104 // the pod's identity does not match (UID, devices)
	CodeInternal          uint = 999 // anything else
)

// Error is a CNI error decided by the agent: the plugin prints it as the
// CNI error object {code, msg, details}.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
	// Errno is ef_vi's errno name for filter errors ("EPERM"), else empty.
	Errno string `json:"errno,omitempty"`

	unreachable bool // set by the client: no answer from the agent
}

func (e *Error) Error() string {
	if e.Details == "" {
		return e.Msg
	}
	return e.Msg + ": " + e.Details
}

// Errorf returns an *Error with code and a formatted message.
func Errorf(code uint, details string, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...), Details: details}
}

// FromFilterError maps a filter error (wrapped anywhere in err) to the CNI
// error for what, e.g. "install filters of pod ns/name": the code follows
// ef_vi's errno, the message names the refused filter, the details say why
// and how to fix it. Other errors become CodeInternal.
func FromFilterError(what string, err error) *Error {
	var ce *Error
	if errors.As(err, &ce) {
		return ce
	}
	var fe *filter.Error
	if !errors.As(err, &fe) {
		return &Error{Code: CodeInternal, Msg: what + " failed", Details: err.Error()}
	}
	e := &Error{Errno: errnoName(fe.Errno), Details: err.Error()}
	spec := fe.Spec
	if spec == "" {
		spec = "(no spec)"
	}
	switch fe.Errno {
	case syscall.EPERM:
		e.Code, e.Msg = CodeFilterRefused, fmt.Sprintf("%s: filter %s refused by policy: %s", what, spec, fe.Reason)
	case syscall.EEXIST, syscall.EBUSY:
		e.Code, e.Msg = CodeFilterConflict, fmt.Sprintf("%s: filter %s conflicts with an installed filter: %s", what, spec, fe.Reason)
	case syscall.EINVAL, syscall.EPROTONOSUPPORT:
		e.Code, e.Msg = CodeBadFilter, fmt.Sprintf("%s: filter %s is invalid: %s", what, spec, fe.Reason)
	case syscall.ENOENT:
		e.Code, e.Msg = CodeNotInstalled, fmt.Sprintf("%s: filter %s is not installed: %s", what, spec, fe.Reason)
	default:
		e.Code, e.Msg = CodeInternal, fmt.Sprintf("%s: filter %s: %s", what, spec, fe.Reason)
	}
	return e
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EPERM:
		return "EPERM"
	case syscall.EEXIST:
		return "EEXIST"
	case syscall.EBUSY:
		return "EBUSY"
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.EPROTONOSUPPORT:
		return "EPROTONOSUPPORT"
	case syscall.ENOENT:
		return "ENOENT"
	}
	return fmt.Sprintf("errno %d", int(e))
}

// IsUnreachable reports whether err says the agent could not be reached
// (as opposed to the agent answering with an error).
func IsUnreachable(err error) bool {
	var ce *Error
	return errors.As(err, &ce) && ce.unreachable
}
