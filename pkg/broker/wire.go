package broker

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"unicode/utf8"
)

// Framing constants. See the package doc for the byte layout.
const (
	// Magic opens every frame: "EF" 0x71, little-endian on the wire as 0x71 0xEF.
	Magic uint16 = 0xEF71
	// Version is the protocol version this package speaks (frame header and HELLO).
	Version uint8 = 1
	// HeaderSize is the fixed size of a frame header in bytes.
	HeaderSize = 12
	// MaxMessageSize bounds a whole frame (header + payload) in bytes.
	MaxMessageSize = 64 << 10
	// MaxPayloadSize bounds a frame's payload in bytes.
	MaxPayloadSize = MaxMessageSize - HeaderSize
	// MaxFDs bounds the file descriptors one frame may carry. Replies carry at
	// most one today; requests carry none.
	MaxFDs = 4
)

// Per-field limits (bytes for strings, entries for lists).
const (
	MaxClientName   = 64
	MaxPoolName     = 253
	MaxIfName       = 15 // IFNAMSIZ-1
	MaxDevices      = 64
	MaxDeviceID     = 128
	MaxAddrs        = 16
	MaxFilterSpec   = 256
	MaxStats        = 256
	MaxStatName     = 64
	MaxErrorMessage = 1024
	// MaxRingCap bounds requested ring capacities (ef_vi: -1 default, 0 none).
	MaxRingCap = 1 << 16
	// MaxRingSize bounds ring sizes in an ALLOC_VI reply.
	MaxRingSize = 1 << 20
	// BufSize is ef_vi's packet buffer size: registered memory is counted in these.
	BufSize = 2048
	// MaxRegMemBytes bounds one memory registration (64 GiB).
	MaxRegMemBytes = 64 << 30
	// MinFrameSize and MaxFrameSize bound the UMEM chunk size.
	MinFrameSize = 2048
	MaxFrameSize = 64 << 10
)

// MsgType identifies a frame's payload. Requests are below 0x80; the OK reply to
// request T has type T|0x80; TypeError answers any request that failed.
type MsgType uint8

// Message types.
const (
	TypeHello     MsgType = 0x01
	TypeAllocPD   MsgType = 0x02
	TypeRegMem    MsgType = 0x03
	TypeAllocVI   MsgType = 0x04
	TypeFilterAdd MsgType = 0x05
	TypeFilterDel MsgType = 0x06
	TypeStats     MsgType = 0x07
	TypeFreeVI    MsgType = 0x08
	TypeFreeMem   MsgType = 0x09
	TypeFreePD    MsgType = 0x0A
	TypeBye       MsgType = 0x0B

	// ReplyBit marks an OK reply: the reply to request T has type T|ReplyBit.
	ReplyBit  MsgType = 0x80
	TypeError MsgType = 0xFF
)

var typeNames = [...]string{
	TypeHello: "HELLO", TypeAllocPD: "ALLOC_PD", TypeRegMem: "REG_MEM", TypeAllocVI: "ALLOC_VI",
	TypeFilterAdd: "FILTER_ADD", TypeFilterDel: "FILTER_DEL", TypeStats: "STATS", TypeFreeVI: "FREE_VI",
	TypeFreeMem: "FREE_MEM", TypeFreePD: "FREE_PD", TypeBye: "BYE",
}

// IsRequest reports whether t is a request type this version knows.
func (t MsgType) IsRequest() bool { return t >= TypeHello && t <= TypeBye }

// Reply returns the OK reply type of request t.
func (t MsgType) Reply() MsgType { return t | ReplyBit }

func (t MsgType) String() string {
	switch {
	case t == TypeError:
		return "ERROR"
	case t.IsRequest():
		return typeNames[t]
	case t&ReplyBit != 0 && (t &^ ReplyBit).IsRequest():
		return typeNames[t&^ReplyBit] + "_OK"
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

// replyFDs is how many fds the OK reply to request t carries.
func replyFDs(t MsgType) int {
	switch t {
	case TypeRegMem, TypeAllocVI:
		return 1
	}
	return 0
}

// Header is a frame header.
type Header struct {
	Magic   uint16
	Version uint8
	Type    MsgType
	ID      uint32 // request id, echoed by the reply; 0 is never used by a client
	Len     uint32 // payload length in bytes
}

// AppendFrame appends a frame (header + payload) for a message of type t with
// request id id to b.
func AppendFrame(b []byte, t MsgType, id uint32, payload []byte) ([]byte, error) {
	if len(payload) > MaxPayloadSize {
		return b, fmt.Errorf("encode %v frame: payload %d bytes exceeds the %d-byte limit", t, len(payload), MaxPayloadSize)
	}
	b = binary.LittleEndian.AppendUint16(b, Magic)
	b = append(b, Version, byte(t))
	b = binary.LittleEndian.AppendUint32(b, id)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...), nil
}

// errHeader is returned for a frame whose header cannot be trusted at all
// (too short, wrong magic): the connection is closed without a reply.
type errHeader struct{ msg string }

func (e *errHeader) Error() string { return "undecodable frame header: " + e.msg }

// DecodeFrame splits a frame into header and payload. An undecodable header
// (short frame, bad magic) returns a nil payload and an error; a decodable
// header with a bad version or a payload length that does not match the frame
// returns the header (so the error can be answered by request id) and an *Error.
func DecodeFrame(frame []byte) (Header, []byte, error) {
	var h Header
	if len(frame) < HeaderSize {
		return h, nil, &errHeader{fmt.Sprintf("%d bytes, need at least %d", len(frame), HeaderSize)}
	}
	h.Magic = binary.LittleEndian.Uint16(frame[0:2])
	h.Version = frame[2]
	h.Type = MsgType(frame[3])
	h.ID = binary.LittleEndian.Uint32(frame[4:8])
	h.Len = binary.LittleEndian.Uint32(frame[8:12])
	if h.Magic != Magic {
		return h, nil, &errHeader{fmt.Sprintf("magic 0x%04x, want 0x%04x (not an efvi broker peer?)", h.Magic, Magic)}
	}
	if h.Version != Version {
		return h, nil, Errorf(syscall.EPROTONOSUPPORT, "frame version %d not supported (this side speaks %d)", h.Version, Version)
	}
	p := frame[HeaderSize:]
	if uint64(h.Len) != uint64(len(p)) {
		return h, nil, Errorf(syscall.EINVAL, "frame %v id %d: header says %d payload bytes, frame has %d (truncated or trailing data)", h.Type, h.ID, h.Len, len(p))
	}
	return h, p, nil
}

// enc builds payloads. Fields are little-endian; strings are u16 length + bytes.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) i32(v int32)  { e.u32(uint32(v)) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) raw(v []byte) { e.b = append(e.b, v...) }
func (e *enc) str(v string) { e.u16(uint16(len(v))); e.b = append(e.b, v...) }

// dec parses payloads strictly: the first error sticks and names the field.
type dec struct {
	b   []byte
	off int
	err error
	msg string // message name, for errors
}

func (d *dec) fail(field, format string, args ...any) {
	if d.err == nil {
		d.err = Errorf(syscall.EINVAL, "decode %s: field %s: %s", d.msg, field, fmt.Sprintf(format, args...))
	}
}

func (d *dec) take(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b)-d.off < n {
		d.fail(field, "truncated at byte %d: need %d bytes, %d left", d.off, n, len(d.b)-d.off)
		return nil
	}
	v := d.b[d.off : d.off+n]
	d.off += n
	return v
}

func (d *dec) u8(f string) uint8 {
	if v := d.take(f, 1); v != nil {
		return v[0]
	}
	return 0
}

func (d *dec) u16(f string) uint16 {
	if v := d.take(f, 2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *dec) u32(f string) uint32 {
	if v := d.take(f, 4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *dec) i32(f string) int32 { return int32(d.u32(f)) }

func (d *dec) u64(f string) uint64 {
	if v := d.take(f, 8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *dec) zero32(f string) {
	if v := d.u32(f); v != 0 && d.err == nil {
		d.fail(f, "reserved, must be 0, got %#x", v)
	}
}

func (d *dec) zero16(f string) {
	if v := d.u16(f); v != 0 && d.err == nil {
		d.fail(f, "reserved, must be 0, got %#x", v)
	}
}

// str reads a u16-length-prefixed string of min..max bytes, valid UTF-8 with
// no control characters.
func (d *dec) str(f string, min, max int) string {
	n := int(d.u16(f + " length"))
	if d.err != nil {
		return ""
	}
	if n < min || n > max {
		d.fail(f, "length %d outside %d..%d", n, min, max)
		return ""
	}
	v := d.take(f, n)
	if d.err != nil {
		return ""
	}
	if err := checkText(string(v)); err != nil {
		d.fail(f, "%v", err)
		return ""
	}
	return string(v)
}

// count reads a u16 list length of at most max entries, each at least
// minEntry bytes, checking that the rest of the payload can hold them (so a
// hostile count never drives an allocation).
func (d *dec) count(f string, max, minEntry int) int {
	n := int(d.u16(f + " count"))
	if d.err != nil {
		return 0
	}
	if n > max {
		d.fail(f, "%d entries, limit %d", n, max)
		return 0
	}
	if n*minEntry > len(d.b)-d.off {
		d.fail(f, "%d entries need at least %d bytes, %d left", n, n*minEntry, len(d.b)-d.off)
		return 0
	}
	return n
}

func (d *dec) end() error {
	if d.err == nil && d.off != len(d.b) {
		d.fail("(end)", "%d trailing bytes", len(d.b)-d.off)
	}
	return d.err
}

func newDec(msg string, p []byte) *dec { return &dec{b: p, msg: msg} }

// checkText accepts valid UTF-8 without control characters.
func checkText(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("not valid UTF-8")
	}
	for i, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("control character %U at byte %d", r, i)
		}
	}
	return nil
}

// checkStr validates a string field before encoding.
func checkStr(msg, field, v string, min, max int) error {
	if len(v) < min || len(v) > max {
		return fmt.Errorf("encode %s: field %s: length %d outside %d..%d", msg, field, len(v), min, max)
	}
	if err := checkText(v); err != nil {
		return fmt.Errorf("encode %s: field %s: %w", msg, field, err)
	}
	return nil
}
