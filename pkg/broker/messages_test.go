package broker

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// sampleMessages has one fully populated value of every message.
func sampleMessages() []Message {
	return []Message{
		&HelloRequest{Version: 1, Caps: CapAFXDP | CapStats, Name: "app[12]"},
		&HelloRequest{Version: 7},
		&HelloReply{Version: 1, Caps: CapAFXDP, MTU: 9000, MAC: [6]byte{2, 1, 2, 3, 4, 5}, Pool: "eth1",
			IfName: "eth1", Devices: []string{"eth1-vi0", "eth1-vi1"},
			Addrs: []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::1")}},
		&HelloReply{Version: 1, MTU: 68, Pool: "p", IfName: "x"},
		&AllocPDRequest{Flags: 0x5},
		&AllocPDReply{PD: 3},
		&RegMemRequest{PD: 3, Size: 4 << 20},
		&RegMemReply{MemReg: 9, ChunkSize: 2048, Size: 4 << 20},
		&AllocVIRequest{PD: 3, MemReg: 9, EvqCap: -1, RxqCap: 512, TxqCap: 0, Flags: 0x10},
		&AllocVIReply{VI: 5, Flags: 1, Geometry: Geometry{QueueID: 2, EvqSize: 1024, RxSize: 512, TxSize: 512,
			FillSize: 1024, CompSize: 512, FrameSize: 2048, Headroom: 256}},
		&FilterAddRequest{VI: 5, Flags: 0x2, Spec: "udp:vid=5,239.1.2.3:5000"},
		&FilterAddReply{Cookie: 0x1234_0000_0001},
		&FilterDelRequest{VI: 5, Cookie: 0x1234_0000_0001},
		&StatsRequest{VI: 5, Flags: StatsReset},
		&StatsReply{Stats: []Stat{{"rx_packets", 1 << 40}, {"rx_nodesc_drops", 0}}},
		&StatsReply{},
		&FreeVIRequest{VI: 5},
		&FreeMemRequest{MemReg: 9},
		&FreePDRequest{PD: 3},
		&ByeRequest{},
		&EmptyReply{Req: TypeFreeVI},
		&ErrorReply{Errno: syscall.EEXIST, Msg: "filter udp:10.0.0.2:80 already owned by VI 3 — ünïcode ok"},
	}
}

func TestRoundTripEveryMessage(t *testing.T) {
	seen := map[MsgType]bool{}
	for _, m := range sampleMessages() {
		t.Run(m.Type().String(), func(t *testing.T) {
			p, err := m.MarshalBinary()
			if err != nil {
				t.Fatalf("marshal %#v: %v", m, err)
			}
			frame, err := AppendFrame(nil, m.Type(), 77, p)
			if err != nil {
				t.Fatal(err)
			}
			h, payload, err := DecodeFrame(frame)
			if err != nil {
				t.Fatalf("decode frame: %v", err)
			}
			if h.Type != m.Type() || h.ID != 77 || h.Version != Version || int(h.Len) != len(p) {
				t.Fatalf("header %+v", h)
			}
			var got Message
			if h.Type.IsRequest() {
				got, err = DecodeRequest(h.Type, payload)
			} else {
				got, err = DecodeReply(h.Type, payload)
			}
			if err != nil {
				t.Fatalf("decode %v: %v", h.Type, err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(m)) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, m)
			}
			// Every proper prefix is rejected (truncation), and so is a trailing byte.
			for n := 0; n < len(payload); n++ {
				if _, err := decodeAny(h.Type, payload[:n]); !errors.Is(err, syscall.EINVAL) {
					t.Fatalf("%v truncated to %d bytes: err %v, want EINVAL", h.Type, n, err)
				}
			}
			if _, err := decodeAny(h.Type, append(payload[:len(payload):len(payload)], 0)); !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("%v with a trailing byte: err %v, want EINVAL", h.Type, err)
			}
		})
		seen[m.Type()] = true
	}
	for t0 := TypeHello; t0 <= TypeBye; t0++ {
		if !seen[t0] {
			t.Errorf("no round-trip sample for request %v", t0)
		}
		if _, err := NewReply(t0.Reply()); err != nil {
			t.Errorf("no reply type for %v", t0)
		}
	}
}

func decodeAny(t MsgType, p []byte) (Message, error) {
	if t.IsRequest() {
		return DecodeRequest(t, p)
	}
	return DecodeReply(t, p)
}

// normalize maps empty slices to nil so DeepEqual compares content.
func normalize(m Message) Message {
	switch v := m.(type) {
	case *HelloReply:
		c := *v
		if len(c.Devices) == 0 {
			c.Devices = nil
		}
		if len(c.Addrs) == 0 {
			c.Addrs = nil
		}
		return &c
	case *StatsReply:
		c := *v
		if len(c.Stats) == 0 {
			c.Stats = nil
		}
		return &c
	}
	return m
}

// payload builds a little-endian payload from u8/u16/u32/u64/string/[]byte parts.
func payload(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case uint8:
			b = append(b, v)
		case uint16:
			b = binary.LittleEndian.AppendUint16(b, v)
		case uint32:
			b = binary.LittleEndian.AppendUint32(b, v)
		case int32:
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		case uint64:
			b = binary.LittleEndian.AppendUint64(b, v)
		case string:
			b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		case []byte:
			b = append(b, v...)
		default:
			panic("payload: bad part")
		}
	}
	return b
}

func TestDecodeRejects(t *testing.T) {
	u32, u64, i32 := func(v uint32) uint32 { return v }, func(v uint64) uint64 { return v }, func(v int32) int32 { return v }
	cases := []struct {
		name string
		t    MsgType
		p    []byte
		want string
	}{
		{"hello version 0", TypeHello, payload(uint16(0), uint16(0), u64(0), ""), "version"},
		{"hello reserved", TypeHello, payload(uint16(1), uint16(1), u64(0), ""), "reserved"},
		{"hello name too long", TypeHello, payload(uint16(1), uint16(0), u64(0), strings.Repeat("a", 65)), "name"},
		{"hello name bad utf8", TypeHello, payload(uint16(1), uint16(0), u64(0), "\xff\xfe"), "UTF-8"},
		{"hello name control", TypeHello, payload(uint16(1), uint16(0), u64(0), "a\nb"), "control"},
		{"hello string length beyond payload", TypeHello, payload(uint16(1), uint16(0), u64(0), uint16(60)), "truncated"},
		{"regmem pd 0", TypeRegMem, payload(u32(0), u32(0), u64(2048)), "id 0"},
		{"regmem size 0", TypeRegMem, payload(u32(1), u32(0), u64(0)), "size"},
		{"regmem size unaligned", TypeRegMem, payload(u32(1), u32(0), u64(1000)), "size"},
		{"regmem size huge", TypeRegMem, payload(u32(1), u32(0), u64(1<<62)), "size"},
		{"regmem flags", TypeRegMem, payload(u32(1), u32(1), u64(2048)), "flags"},
		{"allocvi memreg 0", TypeAllocVI, payload(u32(1), u32(0), i32(-1), i32(-1), i32(-1), u32(0)), "memreg"},
		{"allocvi cap -2", TypeAllocVI, payload(u32(1), u32(1), i32(-2), i32(-1), i32(-1), u32(0)), "evq"},
		{"allocvi cap huge", TypeAllocVI, payload(u32(1), u32(1), i32(-1), i32(1<<20), i32(-1), u32(0)), "rxq"},
		{"allocvi no rings", TypeAllocVI, payload(u32(1), u32(1), i32(-1), i32(0), i32(0), u32(0)), "both 0"},
		{"filter empty spec", TypeFilterAdd, payload(u32(1), u32(0), ""), "spec"},
		{"filter spec too long", TypeFilterAdd, payload(u32(1), u32(0), strings.Repeat("u", 257)), "spec"},
		{"filterdel cookie 0", TypeFilterDel, payload(u32(1), u32(0), u64(0)), "cookie"},
		{"filterdel reserved", TypeFilterDel, payload(u32(1), u32(9), u64(1)), "reserved"},
		{"stats unknown flag", TypeStats, payload(u32(1), u32(2)), "flags"},
		{"freevi 0", TypeFreeVI, payload(u32(0)), "id 0"},
		{"bye with payload", TypeBye, payload(u8(1)), "trailing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeRequest(c.t, c.p)
			if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want EINVAL mentioning %q", err, c.want)
			}
		})
	}
	if _, err := DecodeRequest(0x42, nil); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("unknown type: %v, want EOPNOTSUPP", err)
	}
}

func u8(v uint8) uint8 { return v }

func TestDecodeRejectsReplies(t *testing.T) {
	geo := func(rx, tx, fill, comp, frame, head uint32) []byte {
		return payload(uint32(1), uint32(0), uint32(0), uint32(64), rx, tx, fill, comp, frame, head)
	}
	cases := []struct {
		name string
		t    MsgType
		p    []byte
	}{
		{"vi ring not pow2", TypeAllocVI.Reply(), geo(500, 512, 512, 512, 2048, 0)},
		{"vi fill without rx", TypeAllocVI.Reply(), geo(0, 512, 512, 512, 2048, 0)},
		{"vi frame 1024", TypeAllocVI.Reply(), geo(512, 512, 512, 512, 1024, 0)},
		{"vi headroom", TypeAllocVI.Reply(), geo(512, 512, 512, 512, 2048, 2048)},
		{"regmem size not chunk multiple", TypeRegMem.Reply(), payload(uint32(1), uint32(4096), uint64(6144))},
		{"stats dup", TypeStats.Reply(), payload(uint16(2), "a", uint64(1), "a", uint64(2))},
		{"stats bad name", TypeStats.Reply(), payload(uint16(1), "Rx Packets", uint64(1))},
		{"stats count beyond payload", TypeStats.Reply(), payload(uint16(200), "a", uint64(1))},
		{"hello mtu", TypeHello.Reply(), payload(uint16(1), uint16(0), uint64(0), uint32(10), make([]byte, 6), uint16(0), "p", "i", uint16(0), uint16(0))},
		{"hello ifname long", TypeHello.Reply(), payload(uint16(1), uint16(0), uint64(0), uint32(1500), make([]byte, 6), uint16(0), "p", "0123456789abcdef", uint16(0), uint16(0))},
		{"hello addr family", TypeHello.Reply(), payload(uint16(1), uint16(0), uint64(0), uint32(1500), make([]byte, 6), uint16(0), "p", "i", uint16(0), uint16(1), uint8(5), uint32(0))},
		{"hello 4in6", TypeHello.Reply(), payload(uint16(1), uint16(0), uint64(0), uint32(1500), make([]byte, 6), uint16(0), "p", "i", uint16(0), uint16(1), uint8(6), netip.MustParseAddr("::ffff:1.2.3.4").AsSlice())},
		{"error errno 0", TypeError, payload(uint32(0), "x")},
		{"error errno huge", TypeError, payload(uint32(5000), "x")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := DecodeReply(c.t, c.p); !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("err = %v, want EINVAL", err)
			}
		})
	}
}

func TestMarshalRejectsInvalid(t *testing.T) {
	bad := []Message{
		&HelloRequest{Version: 0},
		&HelloReply{Version: 1, MTU: 1500, Pool: "", IfName: "eth0"},
		&HelloReply{Version: 1, MTU: 1500, Pool: "p", IfName: "eth0", Addrs: []netip.Addr{{}}},
		&RegMemRequest{PD: 1, Size: 3000},
		&AllocVIRequest{PD: 1, MemReg: 1, RxqCap: 0, TxqCap: 0},
		&FilterAddRequest{VI: 1, Spec: "bad\x00spec"},
		&StatsReply{Stats: []Stat{{"a", 1}, {"a", 2}}},
		&FreeVIRequest{},
		&ErrorReply{Errno: 0},
	}
	for _, m := range bad {
		if _, err := m.MarshalBinary(); err == nil {
			t.Errorf("marshal %#v: no error", m)
		}
	}
}

func TestDecodeFrameHeader(t *testing.T) {
	good, _ := AppendFrame(nil, TypeBye, 1, nil)
	if _, _, err := DecodeFrame(good[:11]); err == nil {
		t.Error("short header accepted")
	}
	bad := append([]byte(nil), good...)
	bad[0] = 0
	var eh *errHeader
	if _, _, err := DecodeFrame(bad); !errors.As(err, &eh) {
		t.Errorf("bad magic: %v", err)
	}
	bad = append([]byte(nil), good...)
	bad[2] = 9
	if h, _, err := DecodeFrame(bad); !errors.Is(err, syscall.EPROTONOSUPPORT) || h.ID != 1 {
		t.Errorf("bad version: %v %+v", err, h)
	}
	bad = append([]byte(nil), good...)
	bad[8] = 4
	if _, _, err := DecodeFrame(bad); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("length mismatch: %v", err)
	}
	if _, err := AppendFrame(nil, TypeBye, 1, make([]byte, MaxPayloadSize+1)); err == nil {
		t.Error("oversize payload encoded")
	}
}

func TestErrorType(t *testing.T) {
	err := error(Errorf(syscall.EPERM, "no"))
	if !errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EEXIST) {
		t.Fatal("errors.Is on *Error")
	}
	if ErrnoOf(errors.New("x")) != syscall.EIO || ErrnoOf(syscall.EBUSY) != syscall.EBUSY {
		t.Fatal("ErrnoOf")
	}
	r := errorReplyFor(errors.New(strings.Repeat("é", 1000) + "\x01"))
	if _, err := r.MarshalBinary(); err != nil || len(r.Msg) > MaxErrorMessage {
		t.Fatalf("long message not sanitized: %v", err)
	}
}
