package efvi

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// BufSize is ef_vi's packet buffer size.
const BufSize = 2048

// Memory is a registered memory region (ef_memreg) cut into packet buffers
// of BufSize bytes. In the software backend it is the pod's mapping of the
// agent's sealed memfd, which the kernel uses as the UMEM: Buf(i) is the
// very memory the kernel writes received frames into and reads transmitted
// frames from. A VI uses exactly one memory region (AF_XDP: one UMEM per
// socket).
type Memory struct {
	b       []byte
	bufSize int
	nbufs   int
	file    *os.File // owned; nil if not owned
	unmap   bool
}

// MapMemory maps memfd (read/write, MAP_SHARED) as nbufs buffers of bufSize
// bytes (0 = BufSize) and takes ownership of the file: Close unmaps and
// closes it.
func MapMemory(memfd *os.File, nbufs, bufSize int) (*Memory, error) {
	if bufSize == 0 {
		bufSize = BufSize
	}
	if nbufs <= 0 || bufSize < BufSize || bufSize&(bufSize-1) != 0 {
		return nil, fmt.Errorf("map memory: %d buffers of %d bytes: need > 0 buffers of a power-of-two size >= %d", nbufs, bufSize, BufSize)
	}
	size := nbufs * bufSize
	var st unix.Stat_t
	if err := unix.Fstat(int(memfd.Fd()), &st); err != nil {
		return nil, fmt.Errorf("map memory: fstat: %w", err)
	}
	if st.Size < int64(size) {
		return nil, fmt.Errorf("map memory: fd has %d bytes, %d buffers of %d need %d", st.Size, nbufs, bufSize, size)
	}
	b, err := unix.Mmap(int(memfd.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("map memory (%d bytes): %w", size, err)
	}
	return &Memory{b: b, bufSize: bufSize, nbufs: nbufs, file: memfd, unmap: true}, nil
}

// NumBufs is the number of packet buffers.
func (m *Memory) NumBufs() int { return m.nbufs }

// BufSize is the size of each buffer (2048 unless the agent chose larger).
func (m *Memory) BufSize() int { return m.bufSize }

// Bytes is the whole region.
func (m *Memory) Bytes() []byte { return m.b }

// Buf returns buffer i (BufSize bytes), nil if i is out of range.
func (m *Memory) Buf(i int) []byte {
	if uint(i) >= uint(m.nbufs) {
		return nil
	}
	o := i * m.bufSize
	return m.b[o : o+m.bufSize : o+m.bufSize]
}

// Addr returns buffer i's ef_addr (its offset in the region).
func (m *Memory) Addr(i int) Addr { return Addr(i * m.bufSize) }

// Index returns the buffer that contains a.
func (m *Memory) Index(a Addr) int { return int(a / Addr(m.bufSize)) }

// At returns n bytes at a, nil if that leaves the region.
func (m *Memory) At(a Addr, n int) []byte {
	if n < 0 || a > Addr(len(m.b)) || uint64(n) > uint64(Addr(len(m.b))-a) {
		return nil
	}
	return m.b[a : a+Addr(n)]
}

// Close unmaps the region and closes its fd if this Memory owns them.
// Buffers must not be used afterwards.
func (m *Memory) Close() error {
	var errs []error
	if m.unmap && m.b != nil {
		errs = append(errs, unix.Munmap(m.b))
	}
	m.b = nil
	m.nbufs = 0
	if m.file != nil {
		errs = append(errs, m.file.Close())
		m.file = nil
	}
	return errors.Join(errs...)
}
