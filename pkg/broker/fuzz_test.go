package broker

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"
)

func fuzzSeeds(f *testing.F) {
	for _, m := range sampleMessages() {
		p, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		fr := frame(m.Type(), 1, p)
		f.Add(fr)
		if len(fr) > HeaderSize {
			f.Add(fr[:len(fr)-1])
		}
	}
	f.Add([]byte{})
	f.Add([]byte{0x71, 0xEF, 1, 0x42, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0x71, 0xEF, 2, 0x01, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(frame(TypeHello.Reply(), 1, payload(uint16(1), uint16(0), uint64(0), uint32(1500), make([]byte, 6), uint16(0), "p", "i", uint16(0xffff))))
	f.Add(frame(TypeStats.Reply(), 1, payload(uint16(0xffff))))
}

// FuzzDecode feeds arbitrary frames to the server's decoder and dispatcher
// (with a fake session that creates real fds), before and after HELLO. It must
// never panic, must answer every decodable frame with a well-formed reply to
// the same id, and decoded requests must re-encode to the same bytes.
func FuzzDecode(f *testing.F) {
	fuzzSeeds(f)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		var fl recvFlags
		if len(data) > MaxMessageSize {
			data, fl.truncated = data[:MaxMessageSize], true
		}
		h, p, herr := DecodeFrame(data)
		if herr == nil && h.Type.IsRequest() {
			if m, err := DecodeRequest(h.Type, p); err == nil {
				again, err := m.MarshalBinary()
				if err != nil || !bytes.Equal(again, p) {
					t.Fatalf("%v decodes but re-encodes to %x (%v), want %x", h.Type, again, err, p)
				}
			}
		}
		srv := &Server{cfg: Config{MaxMalformed: 3, Sessions: newFakeFactory()}}
		check := func(cs *connState, in []byte) {
			out, fds, _ := cs.handle(context.Background(), in, fl, 0)
			releaseFDs(fds)
			if out == nil {
				if _, _, err := DecodeFrame(in); err != nil {
					if _, ok := err.(*errHeader); ok {
						return // undecodable header: closed without reply
					}
				}
				t.Fatalf("no reply to %x", in)
			}
			rh, rp, err := DecodeFrame(out)
			if err != nil {
				t.Fatalf("server sent a bad frame: %v", err)
			}
			if _, err := DecodeReply(rh.Type, rp); err != nil {
				t.Fatalf("server sent a bad %v payload: %v", rh.Type, err)
			}
			ih, _, _ := DecodeFrame(in)
			if rh.ID != ih.ID || (rh.Type != TypeError && rh.Type != ih.Type.Reply()) {
				t.Fatalf("reply %v id %d to %v id %d", rh.Type, rh.ID, ih.Type, ih.ID)
			}
		}
		// Before HELLO.
		cs := &connState{srv: srv, log: log}
		check(cs, data)
		cs.close()
		// After HELLO, twice (to reach duplicate/state paths).
		cs = &connState{srv: srv, log: log}
		check(cs, helloFrame(1))
		check(cs, data)
		check(cs, data)
		cs.close()
	})
}

// FuzzDecodeReply feeds arbitrary frames to the client's reply decoder:
// never panics, and whatever decodes re-encodes to the same bytes.
func FuzzDecodeReply(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, p, err := DecodeFrame(data)
		if err != nil {
			return
		}
		m, err := DecodeReply(h.Type, p)
		if err != nil {
			return
		}
		again, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(again, p) {
			t.Fatalf("%v decodes but re-encodes to %x (%v), want %x", h.Type, again, err, p)
		}
	})
}
