package efvi

import (
	"encoding/binary"
	"testing"

	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
)

// FuzzCheckIPv4Fast holds the inline IPv4 discard check to the generic
// parser's verdicts, for every discard mask that uses it.
func FuzzCheckIPv4Fast(f *testing.F) {
	good := make([]byte, 64)
	copy(good[12:], []byte{0x08, 0x00, 0x45, 0, 0, 46, 0, 1, 0, 0, 64, 17})
	copy(good[26:], []byte{10, 0, 0, 2, 10, 0, 0, 1})
	binary.BigEndian.PutUint16(good[24:], frame.Checksum(good[14:34]))
	f.Add(good)
	badSum := append([]byte(nil), good...)
	badSum[24]++
	f.Add(badSum)
	trunc := append([]byte(nil), good[:40]...)
	f.Add(trunc)
	zero := make([]byte, 34)
	copy(zero[12:], []byte{0x08, 0x00, 0x45})
	f.Add(zero)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, mask := range []DiscardMask{DefaultDiscards, DiscardL3CsumErr, DiscardEthLenErr, DiscardL3CsumErr | DiscardEthLenErr} {
			fast := &VI{discards: mask}
			dt, bad, ok := fast.checkIPv4Fast(b)
			if !ok {
				continue
			}
			slow := &VI{discards: mask}
			wdt, wbad := slow.checkGeneric(b)
			if dt != wdt || bad != wbad || fast.st != slow.st {
				t.Fatalf("frame %x, mask %#x: fast %v/%v %+v, generic %v/%v %+v", b, mask, dt, bad, fast.st, wdt, wbad, slow.st)
			}
		}
	})
}

func BenchmarkCheck(b *testing.B) {
	pkt := make([]byte, 106)
	copy(pkt[12:], []byte{0x08, 0x00, 0x45, 0, 0, 92, 0, 1, 0, 0, 64, 17})
	copy(pkt[26:], []byte{10, 0, 0, 2, 10, 0, 0, 1})
	binary.BigEndian.PutUint16(pkt[24:], frame.Checksum(pkt[14:34]))
	v := &VI{discards: DefaultDiscards}
	b.Run("inline", func(b *testing.B) {
		for range b.N {
			if _, bad := v.check(pkt); bad {
				b.Fatal("discarded a good frame")
			}
		}
	})
	b.Run("generic", func(b *testing.B) {
		for range b.N {
			if _, bad := v.checkGeneric(pkt); bad {
				b.Fatal("discarded a good frame")
			}
		}
	})
}
