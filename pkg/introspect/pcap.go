package introspect

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// Classic pcap (microsecond timestamps, host byte order with the magic
// telling readers which), LINKTYPE_ETHERNET: what tcpdump -r, Wireshark and
// gopacket's pcapgo read.
const (
	pcapMagic         = 0xa1b2c3d4
	pcapVersionMajor  = 2
	pcapVersionMinor  = 4
	linktypeEthernet  = 1
	pcapHeaderSize    = 24
	pcapRecHeaderSize = 16
)

// pcapWriter writes a pcap stream. It reuses one record header buffer.
type pcapWriter struct {
	w   io.Writer
	hdr [pcapRecHeaderSize]byte
}

// writePcapHeader writes the file header with the given snap length.
func newPcapWriter(w io.Writer, snapLen uint32) (*pcapWriter, error) {
	var h [pcapHeaderSize]byte
	e := binary.NativeEndian
	e.PutUint32(h[0:], pcapMagic)
	e.PutUint16(h[4:], pcapVersionMajor)
	e.PutUint16(h[6:], pcapVersionMinor)
	// thiszone, sigfigs = 0
	e.PutUint32(h[16:], snapLen)
	e.PutUint32(h[20:], linktypeEthernet)
	if _, err := w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("write pcap header: %w", err)
	}
	return &pcapWriter{w: w}, nil
}

// writeFrame writes one record: data is the captured part of a frame of
// origLen bytes.
func (p *pcapWriter) writeFrame(ts time.Time, data []byte, origLen uint32) error {
	e := binary.NativeEndian
	e.PutUint32(p.hdr[0:], uint32(ts.Unix()))
	e.PutUint32(p.hdr[4:], uint32(ts.Nanosecond()/1000))
	e.PutUint32(p.hdr[8:], uint32(len(data)))
	e.PutUint32(p.hdr[12:], origLen)
	if _, err := p.w.Write(p.hdr[:]); err != nil {
		return fmt.Errorf("write pcap record: %w", err)
	}
	if _, err := p.w.Write(data); err != nil {
		return fmt.Errorf("write pcap record: %w", err)
	}
	return nil
}
