package cniapi

import (
	"errors"
	"fmt"
	"strconv"
	"syscall"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

const errorDomain = "efvi.io"
const errorReason = "CNI_ERROR"

// toStatus turns an Agent error into a gRPC status carrying the CNI error.
func toStatus(err error) error {
	var ce *Error
	if !errors.As(err, &ce) {
		ce = &Error{Code: CodeInternal, Msg: "agent error", Details: err.Error()}
	}
	gc := codes.Unknown
	switch ce.Code {
	case CodeTryAgainLater, CodePluginUnavailable:
		gc = codes.Unavailable
	case CodeFilterRefused:
		gc = codes.PermissionDenied
	case CodeFilterConflict:
		gc = codes.AlreadyExists
	case CodeBadFilter:
		gc = codes.InvalidArgument
	case CodeNotInstalled:
		gc = codes.NotFound
	case CodePodMismatch:
		gc = codes.FailedPrecondition
	case CodeInternal:
		gc = codes.Internal
	}
	st := status.New(gc, ce.Error())
	wd, derr := st.WithDetails(&errdetails.ErrorInfo{
		Reason: errorReason, Domain: errorDomain,
		Metadata: map[string]string{"code": strconv.FormatUint(uint64(ce.Code), 10), "msg": ce.Msg, "details": ce.Details, "errno": ce.Errno},
	})
	if derr != nil {
		return st.Err()
	}
	return wd.Err()
}

// fromStatus turns a call error back into an *Error. Errors without a CNI
// error (the agent is unreachable, a deadline passed) keep their gRPC code
// and become CodeTryAgainLater for Unavailable/DeadlineExceeded, else
// CodeInternal.
func fromStatus(err error) *Error {
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: CodeInternal, Msg: "agent call failed", Details: err.Error()}
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain && info.GetReason() == errorReason {
			md := info.GetMetadata()
			code, perr := strconv.ParseUint(md["code"], 10, 32)
			if perr != nil {
				code = uint64(CodeInternal)
			}
			return &Error{Code: uint(code), Msg: md["msg"], Details: md["details"], Errno: md["errno"]}
		}
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return &Error{Code: CodeTryAgainLater, Msg: "the efvi agent is not reachable", Details: st.Message(), unreachable: true}
	}
	return &Error{Code: CodeInternal, Msg: "agent call failed", Details: fmt.Sprintf("%s: %s", st.Code(), st.Message())}
}

// IsUnreachable reports whether err says the agent could not be reached
// (as opposed to the agent answering with an error).
func IsUnreachable(err error) bool {
	var ce *Error
	return errors.As(err, &ce) && ce.unreachable
}
