package efvi

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"

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
	// dma is set for memory registered with a NIC (hardware backend): the
	// DMA address of every 4 KiB NIC page, and the runs of pages whose
	// addresses are contiguous, sorted by address, for the reverse map.
	dma  []uint64
	runs []dmaRun
}

// nicPageShift is EF_VI_NIC_PAGE_SHIFT: ef_memreg maps memory in 4 KiB
// NIC pages.
const nicPageShift = 12

// dmaRun is a run of NIC pages with contiguous DMA addresses.
type dmaRun struct {
	dma, off, len uint64
}

// setDMA makes m a NIC-registered region: Addr returns real DMA addresses
// (ef_memreg_dma_addr) and Index/At/Offset translate them back.
func (m *Memory) setDMA(pages []uint64) {
	m.dma = pages
	m.runs = m.runs[:0]
	for i, a := range pages {
		off := uint64(i) << nicPageShift
		if n := len(m.runs); n > 0 && m.runs[n-1].dma+m.runs[n-1].len == a && m.runs[n-1].off+m.runs[n-1].len == off {
			m.runs[n-1].len += 1 << nicPageShift
			continue
		}
		m.runs = append(m.runs, dmaRun{dma: a, off: off, len: 1 << nicPageShift})
	}
	slices.SortFunc(m.runs, func(a, b dmaRun) int { return cmp.Compare(a.dma, b.dma) })
}

// Offset returns the byte offset in the region of ef_addr a; false if a is
// not in the region. On the software backend ef_addr is the offset.
func (m *Memory) Offset(a Addr) (uint64, bool) {
	if m.dma == nil {
		return uint64(a), uint64(a) < uint64(len(m.b))
	}
	r := m.runs
	i, _ := slices.BinarySearchFunc(r, uint64(a), func(x dmaRun, t uint64) int {
		switch {
		case x.dma+x.len <= t:
			return -1
		case x.dma > t:
			return 1
		}
		return 0
	})
	if i == len(r) || uint64(a) < r[i].dma || uint64(a) >= r[i].dma+r[i].len {
		return 0, false
	}
	return r[i].off + uint64(a) - r[i].dma, true
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

// Addr returns buffer i's ef_addr: its offset in the region on the
// software backend, its DMA address (ef_memreg_dma_addr) on hardware.
func (m *Memory) Addr(i int) Addr {
	if m.dma != nil {
		off := uint64(i) * uint64(m.bufSize)
		return Addr(m.dma[off>>nicPageShift] | off&(1<<nicPageShift-1))
	}
	return Addr(i * m.bufSize)
}

// Index returns the buffer that contains ef_addr a (-1 if none does on
// hardware).
func (m *Memory) Index(a Addr) int {
	if m.dma != nil {
		off, ok := m.Offset(a)
		if !ok {
			return -1
		}
		return int(off / uint64(m.bufSize))
	}
	return int(a / Addr(m.bufSize))
}

// At returns n bytes at ef_addr a, nil if that leaves the region (or, on
// hardware, the 4 KiB NIC page: DMA addresses are contiguous only within
// one).
func (m *Memory) At(a Addr, n int) []byte {
	if m.dma != nil {
		off, ok := m.Offset(a)
		if !ok || n < 0 || off&(1<<nicPageShift-1)+uint64(n) > 1<<nicPageShift {
			return nil
		}
		return m.b[off : off+uint64(n)]
	}
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
