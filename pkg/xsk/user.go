package xsk

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Rings is the user side of a bound socket: the four mapped rings and the
// mapped packet memory. It needs no privilege. It is not safe for concurrent
// use (like ef_vi: one thread drives a VI).
type Rings struct {
	FD       int
	Geometry Geometry
	Fill     FillRing
	Comp     CompRing
	Rx       RxRing
	Tx       TxRing
	// UMEM is the packet memory (the memfd mapped MAP_SHARED, read/write).
	UMEM []byte

	maps    [4][]byte
	ownUMEM bool
}

// Map mmaps the rings of the bound socket xskFD (XDP_MMAP_OFFSETS; the four
// XDP_*PGOFF_* ranges) and the packet memory memFD (MAP_SHARED, read/write)
// according to g. It does not take ownership of the fds: Close unmaps but
// leaves closing them to the caller. A ring of size 0 in g is not mapped.
// memFD < 0 maps only the rings (UMEM stays nil: the caller maps the memory
// itself, e.g. because several users share one mapping).
func Map(xskFD, memFD int, g Geometry) (*Rings, error) {
	if err := g.Validate(); err != nil {
		return nil, fmt.Errorf("xsk map: %w", err)
	}
	var off unix.XDPMmapOffsets
	n := uint32(unsafe.Sizeof(off))
	if err := getsockoptRaw(xskFD, unix.SOL_XDP, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), &n); err != nil {
		return nil, fmt.Errorf("xsk map: getsockopt XDP_MMAP_OFFSETS on fd %d (is it an AF_XDP socket?): %w", xskFD, err)
	}
	if n != uint32(unsafe.Sizeof(off)) {
		return nil, fmt.Errorf("xsk map: XDP_MMAP_OFFSETS returned %d bytes, want %d (kernel older than 5.4?)", n, unsafe.Sizeof(off))
	}
	r := &Rings{FD: xskFD, Geometry: g}
	ok := false
	defer func() {
		if !ok {
			r.Close()
		}
	}()
	type spec struct {
		name  string
		pgoff int64
		off   unix.XDPRingOffset
		size  uint32
		elem  uint64
		slot  int
	}
	for _, s := range []spec{
		{"fill", unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, g.FillSize, 8, 0},
		{"completion", unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, g.CompSize, 8, 1},
		{"rx", unix.XDP_PGOFF_RX_RING, off.Rx, g.RxSize, uint64(unsafe.Sizeof(Desc{})), 2},
		{"tx", unix.XDP_PGOFF_TX_RING, off.Tx, g.TxSize, uint64(unsafe.Sizeof(Desc{})), 3},
	} {
		if s.size == 0 {
			continue
		}
		length := s.off.Desc + uint64(s.size)*s.elem
		mem, err := unix.Mmap(xskFD, s.pgoff, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("xsk map: mmap %s ring (%d entries): %w", s.name, s.size, err)
		}
		r.maps[s.slot] = mem
		switch s.slot {
		case 0:
			initRing(&r.Fill.ring, mem, s.off, s.size)
			r.Fill.descs = u64s(mem, s.off.Desc, s.size)
			r.Fill.cachedProd = *r.Fill.producer
			r.Fill.cachedCons = *r.Fill.consumer + s.size
		case 1:
			initRing(&r.Comp.ring, mem, s.off, s.size)
			r.Comp.descs = u64s(mem, s.off.Desc, s.size)
			r.Comp.cachedCons = *r.Comp.consumer
			r.Comp.cachedProd = *r.Comp.producer
		case 2:
			initRing(&r.Rx.ring, mem, s.off, s.size)
			r.Rx.descs = descs(mem, s.off.Desc, s.size)
			r.Rx.cachedCons = *r.Rx.consumer
			r.Rx.cachedProd = *r.Rx.producer
		case 3:
			initRing(&r.Tx.ring, mem, s.off, s.size)
			r.Tx.descs = descs(mem, s.off.Desc, s.size)
			r.Tx.cachedProd = *r.Tx.producer
			r.Tx.cachedCons = *r.Tx.consumer + s.size
		}
	}
	if memFD < 0 {
		ok = true
		return r, nil
	}
	size := int(g.FrameSize) * int(g.NumFrames)
	var st unix.Stat_t
	if err := unix.Fstat(memFD, &st); err != nil {
		return nil, fmt.Errorf("xsk map: fstat memfd %d: %w", memFD, err)
	}
	if st.Size < int64(size) {
		return nil, fmt.Errorf("xsk map: memfd %d has %d bytes, geometry needs %d", memFD, st.Size, size)
	}
	mem, err := unix.Mmap(memFD, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("xsk map: mmap packet memory (%d bytes): %w", size, err)
	}
	r.UMEM = mem
	r.ownUMEM = true
	ok = true
	return r, nil
}

// Close unmaps the rings and the packet memory. The fds stay open.
func (r *Rings) Close() error {
	var errs []error
	for i, m := range r.maps {
		if m != nil {
			if err := unix.Munmap(m); err != nil {
				errs = append(errs, err)
			}
			r.maps[i] = nil
		}
	}
	if r.UMEM != nil && r.ownUMEM {
		if err := unix.Munmap(r.UMEM); err != nil {
			errs = append(errs, err)
		}
		r.UMEM = nil
	}
	return errors.Join(errs...)
}

// KickTx asks the kernel to transmit what is on the TX ring:
// sendto(fd, NULL, 0, MSG_DONTWAIT). It returns the raw errno (0 = done).
// EAGAIN/EBUSY/ENOBUFS mean "kick again later"; ENETDOWN that the device is
// down; ENXIO that the socket is no longer bound (device gone).
func KickTx(fd int) unix.Errno {
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	return e
}

// KickRx asks the kernel to look at the fill ring / deliver RX:
// recvfrom(fd, NULL, 0, MSG_DONTWAIT). It returns the raw errno (0 = done).
// In copy mode this is nearly a no-op, but it is also the cheapest way to
// learn that the socket was unbound (ENXIO).
func KickRx(fd int) unix.Errno {
	_, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	return e
}

// Stats is struct xdp_statistics.
type Stats struct {
	RxDropped            uint64 // dropped for other reasons (e.g. frame larger than a chunk)
	RxInvalidDescs       uint64 // bad fill descriptors
	TxInvalidDescs       uint64 // bad TX descriptors
	RxRingFull           uint64 // dropped because the RX ring was full
	RxFillRingEmptyDescs uint64 // dropped because the fill ring was empty (ef_vi: no-descriptor drops)
	TxRingEmptyDescs     uint64 // TX kicks that found the TX ring empty
}

// Statistics reads XDP_STATISTICS. It needs no privilege. It makes no
// allocation.
func Statistics(fd int, s *Stats) error {
	var k unix.XDPStatistics
	n := uint32(unsafe.Sizeof(k))
	if err := getsockoptRaw(fd, unix.SOL_XDP, unix.XDP_STATISTICS, unsafe.Pointer(&k), &n); err != nil {
		return err
	}
	*s = Stats{k.Rx_dropped, k.Rx_invalid_descs, k.Tx_invalid_descs, k.Rx_ring_full, k.Rx_fill_ring_empty_descs, k.Tx_ring_empty_descs}
	return nil
}

// SocketError reads and clears SO_ERROR (the kernel sets ENETDOWN when the
// bound device goes away).
func SocketError(fd int) unix.Errno {
	var v int32
	n := uint32(4)
	if err := getsockoptRaw(fd, unix.SOL_SOCKET, unix.SO_ERROR, unsafe.Pointer(&v), &n); err != nil {
		if e, ok := err.(unix.Errno); ok {
			return e
		}
		return unix.EIO
	}
	return unix.Errno(v)
}
