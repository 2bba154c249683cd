package dataplane

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

func sample(vi uint32, dir Direction, length, caplen uint32, data []byte) []byte {
	b := make([]byte, capMetaSize, capMetaSize+len(data))
	e := binary.NativeEndian
	e.PutUint64(b[capOffTime:], 12345)
	e.PutUint32(b[capOffVI:], vi)
	e.PutUint32(b[capOffDir:], uint32(dir))
	e.PutUint32(b[capOffLen:], length)
	e.PutUint32(b[capOffCapLen:], caplen)
	return append(b, data...)
}

func TestParseSample(t *testing.T) {
	mono := func(ns uint64) time.Time { return time.Unix(0, int64(ns)) }
	// Trailing perf padding is ignored.
	f, err := ParseSample(sample(7, CaptureTX, 100, 4, []byte("abcdXYZ")), mono)
	if err != nil {
		t.Fatal(err)
	}
	if f.VI != 7 || f.Dir != CaptureTX || f.Len != 100 || string(f.Data) != "abcd" || !f.Time.Equal(time.Unix(0, 12345)) {
		t.Fatalf("parsed %+v", f)
	}
	for name, raw := range map[string][]byte{
		"short header":      make([]byte, capMetaSize-1),
		"caplen > len":      sample(1, CaptureRX, 3, 4, []byte("abcd")),
		"caplen > carried":  sample(1, CaptureRX, 10, 5, []byte("abcd")),
		"unknown direction": sample(1, 9, 4, 4, []byte("abcd")),
	} {
		if _, err := ParseSample(raw, mono); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseSample(f *testing.F) {
	f.Add(sample(1, CaptureRX, 4, 4, []byte("abcd")))
	f.Add(sample(2, CaptureTX, 1500, 0, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		fr, err := ParseSample(raw, nil)
		if err != nil {
			return
		}
		if uint32(len(fr.Data)) > fr.Len || len(fr.Data)+capMetaSize > len(raw) {
			t.Fatalf("parsed %d bytes of a %d-byte frame from %d raw bytes", len(fr.Data), fr.Len, len(raw))
		}
	})
}

// nextFrame waits for a captured frame (hang guard, not a timing assertion).
func nextFrame(t *testing.T, c *Capture) Frame {
	t.Helper()
	select {
	case f, ok := <-c.Frames():
		if !ok {
			t.Fatal("capture ended early")
		}
		return f
	case <-time.After(waitLimit):
		t.Fatalf("no captured frame within %v", waitLimit)
	}
	return Frame{}
}

// TestCaptureRXAndTX captures a VI's real traffic: frames stolen for it
// from the port and frames it sends, in order, byte for byte, with
// directions; spoofed TX is not captured; a snap length truncates; stopping
// switches the capture off.
func TestCaptureRXAndTX(t *testing.T) {
	l := newLab(t)
	v := l.createVI(1)
	viFd := l.viSocket(v)
	l.install(1, localSpec(filter.ProtoUDP, l.portIP.String(), 5000))
	capt, err := NewCapturer(l.dp, CaptureOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { capt.Close() })
	if _, err := capt.Start(9, 0); !errors.Is(err, unix.ENODEV) {
		t.Fatalf("capture of a missing VI: %v, want ENODEV", err)
	}
	c, err := capt.Start(1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := capt.Start(1, 0); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("second capture of VI 1: %v, want EBUSY", err)
	}
	if st := l.dp.Status(); len(st.Capturing) != 1 || st.Capturing[0] != 1 || !st.Attached {
		t.Fatalf("status %+v, want attached and capturing VI 1", st)
	}

	const n = 5
	type sent struct {
		dir   Direction
		frame []byte
	}
	var want []sent
	for i := 0; i < n; i++ {
		rx := l.toPort(5000, fmt.Sprintf("cap-rx-%d", i))
		l.send(rx)
		recvFrame(t, viFd, fmt.Sprintf("cap-rx-%d", i)) // delivered: the RX program ran
		want = append(want, sent{CaptureRX, rx})
		badMAC := l.portMAC
		badMAC[5] ^= 0xff
		if _, err := unix.Write(viFd, l.txFrame(badMAC, l.portIP, "spoofed")); err != nil {
			t.Fatal(err)
		}
		tx := l.txFrame(l.portMAC, l.portIP, fmt.Sprintf("cap-tx-%d", i))
		if _, err := unix.Write(viFd, tx); err != nil {
			t.Fatal(err)
		}
		want = append(want, sent{CaptureTX, tx})
	}
	// RX and TX run on whichever CPU the sender used, so order is only
	// guaranteed per direction.
	got := map[Direction][][]byte{}
	for range want {
		f := nextFrame(t, c)
		if f.VI != 1 || f.Len != uint32(len(f.Data)) || f.Time.IsZero() {
			t.Fatalf("frame %+v", f)
		}
		if bytes.Contains(f.Data, []byte("spoofed")) {
			t.Fatal("a spoofed TX frame was captured")
		}
		got[f.Dir] = append(got[f.Dir], f.Data)
	}
	for _, d := range []Direction{CaptureRX, CaptureTX} {
		var exp [][]byte
		for _, w := range want {
			if w.dir == d {
				exp = append(exp, w.frame)
			}
		}
		if len(got[d]) != len(exp) {
			t.Fatalf("%s: captured %d frames, want %d", d, len(got[d]), len(exp))
		}
		for i := range exp {
			if !bytes.Equal(got[d][i], exp[i]) {
				t.Fatalf("%s frame %d: captured %x, want %x", d, i, got[d][i], exp[i])
			}
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if st := l.dp.Status(); len(st.Capturing) != 0 {
		t.Fatalf("still capturing after Close: %+v", st)
	}

	// Snap length: 14 bytes of Ethernet header, full length reported.
	c, err = capt.Start(1, 14)
	if err != nil {
		t.Fatal(err)
	}
	rx := l.toPort(5000, "snapped")
	l.send(rx)
	f := nextFrame(t, c)
	if f.Len != uint32(len(rx)) || !bytes.Equal(f.Data, rx[:14]) {
		t.Fatalf("snapped frame: len %d data %x, want len %d data %x", f.Len, f.Data, len(rx), rx[:14])
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Off again: traffic flows and nothing is queued.
	l.send(l.toPort(5000, "after-stop"))
	recvFrame(t, viFd, "after-stop")
	if _, ok := <-c.Frames(); ok {
		t.Fatal("frame queued after Close")
	}
}

// BenchmarkVIPrograms measures the VI RX and TX programs per frame in the
// kernel (BPF_PROG_TEST_RUN), with capture off (the per-frame cost of the
// capture switch is one array lookup) and on (perf output of the frame).
func BenchmarkVIPrograms(b *testing.B) {
	const vi = 3
	srcMAC := [6]byte{0x02, 0xaa, 0, 0, 0, 4}
	rxPkt := udp4("10.0.0.2", "10.0.0.1", 1, 5000).bytes()
	txF := udp4("10.0.0.5", "10.0.0.9", 1, 2)
	txF.src = srcMAC
	txPkt := txF.bytes()
	for _, c := range []struct {
		name    string
		tx      bool
		capture bool
	}{{"rx/capture-off", false, false}, {"tx/capture-off", true, false}, {"rx/capture-on", false, true}, {"tx/capture-on", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			r := newRig(b)
			rx, tx := r.viProgs(vi, srcMAC, txF.srcIP)
			prog, pkt := rx, rxPkt
			if c.tx {
				prog, pkt = tx, txPkt
			}
			if c.capture {
				// A real capturer: the perf rings exist and are drained.
				p := &Port{cfg: PortConfig{Ifname: "bench", Limits: Limits{}.withDefaults()}, m: r.m, vis: map[uint32]*VI{vi: {id: vi}}}
				capt, err := NewCapturer(p, CaptureOptions{})
				if err != nil {
					b.Fatal(err)
				}
				cp, err := capt.Start(vi, 0)
				if err != nil {
					b.Fatal(err)
				}
				stop := make(chan struct{})
				go func() {
					for {
						select {
						case <-cp.Frames():
						case <-stop:
							return
						}
					}
				}()
				b.Cleanup(func() { close(stop); capt.Close() })
			}
			var sum time.Duration
			for i := 0; i < b.N; i++ {
				_, d, err := prog.Benchmark(pkt, 100000, nil)
				if err != nil {
					b.Fatal(err)
				}
				sum += d
			}
			b.ReportMetric(float64(sum.Nanoseconds())/float64(b.N), "kernel-ns/frame")
		})
	}
}
