package xsk

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func nlmsg(typ uint16, data []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(data)+4)
	binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+len(data)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func diagMsg(ino uint32) []byte {
	d := make([]byte, diagMsgLen)
	d[0] = unix.AF_XDP
	d[1] = unix.SOCK_RAW
	binary.NativeEndian.PutUint32(d[4:], ino)
	return d
}

func errMsg(errno unix.Errno) []byte {
	d := make([]byte, 4+unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(d, uint32(-int32(errno)))
	return nlmsg(unix.NLMSG_ERROR, d)
}

func TestParseDiag(t *testing.T) {
	out := map[uint64]bool{}
	b := append(nlmsg(sockDiagByFamily, diagMsg(7)), nlmsg(sockDiagByFamily, diagMsg(9))...)
	done, err := parseDiag(b, out)
	if err != nil || done || !out[7] || !out[9] || len(out) != 2 {
		t.Fatalf("done %v err %v out %v", done, err, out)
	}
	if done, err := parseDiag(nlmsg(unix.NLMSG_DONE, make([]byte, 4)), out); !done || err != nil {
		t.Fatalf("DONE: %v %v", done, err)
	}
	if _, err := parseDiag(errMsg(unix.ENOENT), out); !errors.Is(err, ErrNoDiag) {
		t.Fatalf("ENOENT (no xsk_diag): %v, want ErrNoDiag", err)
	}
	if _, err := parseDiag(errMsg(unix.EPERM), out); err == nil || errors.Is(err, ErrNoDiag) {
		t.Fatalf("EPERM: %v", err)
	}
	if _, err := parseDiag(nlmsg(sockDiagByFamily, []byte{1, 2}), out); err == nil {
		t.Fatal("short AF_XDP reply accepted")
	}
}

func FuzzParseDiag(f *testing.F) {
	f.Add(nlmsg(sockDiagByFamily, diagMsg(7)))
	f.Add(errMsg(unix.ENOENT))
	f.Add(nlmsg(unix.NLMSG_DONE, make([]byte, 4)))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseDiag(b, map[uint64]bool{})
	})
}
