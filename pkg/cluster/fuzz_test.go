package cluster

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strconv"
	"syscall"
	"testing"
)

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{"0 1", "0 2", "2 alloc-1 0", "2 alloc-1 2", "2 a 4294967296", "1 0", "\x00", "2  x 0", "0 01", "2 0@x 0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, b := parseRequest(line)
		if b != nil {
			if b.errno == 0 || b.reason == "" {
				t.Fatalf("refusal without errno or reason: %+v", b)
			}
			if r := allocFail(b.errno); len(r) >= allocReplyBuf || len(r) >= versionReplyBuf+8 {
				t.Fatalf("error reply %q too long", r)
			}
			return
		}
		// An accepted request re-formats to exactly the input (strictness).
		var again string
		switch req.kind {
		case reqVersion:
			again = "0 " + strconv.Itoa(req.version)
		case reqAlloc:
			if ValidName(req.name) != nil {
				t.Fatalf("accepted bad name %q", req.name)
			}
			again = "2 " + req.name + " " + strconv.Itoa(req.flags)
		default:
			t.Fatalf("accepted kind %d", req.kind)
		}
		if again != string(line) {
			t.Fatalf("accepted %q, which formats back as %q", line, again)
		}
	})
}

// FuzzSession drives the connection loop's reader and state machine with
// arbitrary client bytes: no panic, every reply fits the client's buffers,
// an fd only on the success reply, nothing after a closing reply.
func FuzzSession(f *testing.F) {
	f.Add([]byte("0 1\n2 alloc-1 0\n"))
	f.Add([]byte("0 1\n2 other 0\n"))
	f.Add([]byte("0 2\n"))
	f.Add([]byte("2 alloc-1 0\n0 1\n"))
	f.Add([]byte("0 1\n2 alloc-1 0\n2 alloc-1 0\n"))
	f.Add(bytes.Repeat([]byte("x"), 300))
	f.Add([]byte("0 1\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		var dones int
		alloc := AllocatorFunc(func(_ context.Context, r Request) (Grant, error) {
			if r.Cluster == "alloc-1" {
				return Grant{PDResID: 1<<32 - 1, VISetResID: 1 << 31, IfName: "ens1f0np0", FD: 3, Done: func() { dones++ }}, nil
			}
			if r.Cluster == "errno" {
				return Grant{}, syscall.Errno(1<<31 - 1)
			}
			return Grant{}, ErrNoCluster
		})
		rd := lineReader{c: bytes.NewReader(in)}
		s := session{}
		for i := 0; ; i++ {
			line, err := rd.next()
			if err != nil {
				break
			}
			if len(line) >= MaxRequest {
				t.Fatalf("line of %d bytes passed the reader", len(line))
			}
			reply, fd, keep := s.handle(context.Background(), line, alloc, 0, log)
			if reply == nil || reply[len(reply)-1] != '\n' || bytes.Count(reply, []byte{'\n'}) != 1 {
				t.Fatalf("reply %q is not one line", reply)
			}
			limit := allocReplyBuf
			if reply[0] == '1' {
				limit = versionReplyBuf
			}
			if len(reply) >= limit {
				t.Fatalf("reply %q does not fit the client's %d-byte buffer", reply, limit)
			}
			if fd >= 0 != bytes.HasPrefix(reply, []byte("3 0 ")) {
				t.Fatalf("fd %d with reply %q", fd, reply)
			}
			if !keep {
				break
			}
		}
		s.finish()
		if dones > 1 {
			t.Fatalf("Done called %d times", dones)
		}
	})
}
