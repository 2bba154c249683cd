package cluster

import (
	"bytes"
	"fmt"
	"strconv"
	"syscall"
)

// Protocol constants, from Onload's etherfabric/internal/cluster_protocol.h.
const (
	// ProtocolVersion is the only client protocol version libciul speaks.
	ProtocolVersion = 1
	// MaxRequest bounds one request line, newline included (MSGLEN_MAX).
	MaxRequest = 255
	// MaxName bounds a cluster name.
	MaxName = 64
	// MaxIfName bounds the interface name in a success reply: libciul copies
	// it into an IF_NAMESIZE (16) buffer and terminates it, so 15 bytes.
	MaxIfName = 15

	versionReplyBuf = 16  // the client's recv buffer for the version reply
	allocReplyBuf   = 128 // and for the allocate reply

	msgVersionReq  = 0
	msgVersionResp = 1
	msgAllocReq    = 2
	msgAllocResp   = 3

	resultSuccess = 0
	resultFail    = 1
)

// reqKind is what a request line asks for.
type reqKind int

const (
	reqVersion reqKind = iota + 1
	reqAlloc
)

// request is one parsed request line.
type request struct {
	kind    reqKind
	version int    // reqVersion
	name    string // reqAlloc: the cluster name (libciul strips "N@")
	flags   int    // reqAlloc: ef_pd_flags
}

// badRequest is a request refused before it reaches the Allocator.
type badRequest struct {
	errno  syscall.Errno
	reason string
}

func (b *badRequest) Error() string { return fmt.Sprintf("%s (%v)", b.reason, b.errno) }

func bad(errno syscall.Errno, format string, args ...any) *badRequest {
	return &badRequest{errno: errno, reason: fmt.Sprintf(format, args...)}
}

// parseRequest parses one request line, without its trailing newline.
// libciul formats requests with "%d %d\n" and "%d %s %d\n": single spaces,
// decimal numbers; nothing else is accepted.
func parseRequest(line []byte) (request, *badRequest) {
	if len(line) == 0 {
		return request{}, bad(syscall.EINVAL, "empty request line")
	}
	if i := bytes.IndexFunc(line, func(r rune) bool { return r < 0x21 && r != ' ' || r > 0x7e }); i >= 0 {
		return request{}, bad(syscall.EINVAL, "request has a non-printable byte %#02x at offset %d", line[i], i)
	}
	f := bytes.Split(line, []byte{' '})
	kind, ok := decimal(f[0])
	if !ok {
		return request{}, bad(syscall.EINVAL, "request type %q is not a decimal number", clip(f[0]))
	}
	switch kind {
	case msgVersionReq:
		if len(f) != 2 {
			return request{}, bad(syscall.EINVAL, "version request has %d fields, want 2 (\"0 <version>\")", len(f))
		}
		v, ok := decimal(f[1])
		if !ok {
			return request{}, bad(syscall.EINVAL, "version %q is not a decimal number", clip(f[1]))
		}
		return request{kind: reqVersion, version: v}, nil
	case msgAllocReq:
		if len(f) != 3 {
			return request{}, bad(syscall.EINVAL, "allocate request has %d fields, want 3 (\"2 <cluster> <pd_flags>\")", len(f))
		}
		if err := checkName(f[1]); err != "" {
			return request{}, bad(syscall.EINVAL, "cluster name %q: %s", clip(f[1]), err)
		}
		fl, ok := decimal(f[2])
		if !ok {
			return request{}, bad(syscall.EINVAL, "pd_flags %q is not a non-negative decimal number", clip(f[2]))
		}
		return request{kind: reqAlloc, name: string(f[1]), flags: fl}, nil
	default:
		return request{}, bad(syscall.EBADMSG, "unknown request type %d (want 0 version or 2 allocate)", kind)
	}
}

// decimal parses a non-negative decimal int32 with no sign and no leading zeros.
func decimal(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 10 || (len(b) > 1 && b[0] == '0') {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(string(b), 10, 32)
	if err != nil {
		return 0, false
	}
	return int(n), true
}

// ValidName reports whether name can be a cluster name: 1 to MaxName bytes
// of letters, digits, '.', '_' and '-' (no '@': libciul takes a leading
// "N@" as a channel index and strips it before sending the name).
func ValidName(name string) error {
	if msg := checkName([]byte(name)); msg != "" {
		return fmt.Errorf("cluster name %q: %s", name, msg)
	}
	return nil
}

func checkName(b []byte) string {
	if len(b) == 0 {
		return "empty"
	}
	if len(b) > MaxName {
		return fmt.Sprintf("%d bytes, at most %d", len(b), MaxName)
	}
	for _, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Sprintf("byte %q not allowed (letters, digits, '.', '_', '-')", c)
		}
	}
	return ""
}

// checkIfName validates the interface name of a success reply.
func checkIfName(s string) error {
	if s == "" || len(s) > MaxIfName {
		return fmt.Errorf("interface name %q: want 1 to %d bytes", s, MaxIfName)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > 0x7e || s[i] == '/' {
			return fmt.Errorf("interface name %q: byte %#02x not allowed", s, s[i])
		}
	}
	return nil
}

func versionReply(ok bool) []byte {
	if ok {
		return fmt.Appendf(nil, "%d %d\n", msgVersionResp, resultSuccess)
	}
	return fmt.Appendf(nil, "%d %d\n", msgVersionResp, resultFail)
}

func allocOK(pdRes, visetRes uint32, ifname string) []byte {
	return fmt.Appendf(nil, "%d %d %d %d %s\n", msgAllocResp, resultSuccess, int32(pdRes), int32(visetRes), ifname)
}

func allocFail(errno syscall.Errno) []byte {
	return fmt.Appendf(nil, "%d %d %d 0 0\n", msgAllocResp, resultFail, int(errno))
}

// clip shortens b for a log line.
func clip(b []byte) string {
	if len(b) > 32 {
		return string(b[:32]) + "..."
	}
	return string(b)
}
