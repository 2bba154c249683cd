package xsk

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Desc is an RX or TX descriptor (struct xdp_desc): Addr is the UMEM offset
// of the frame data, Len its length, Options e.g. XDP_PKT_CONTD.
type Desc = unix.XDPDesc

// ring is the shared part of the four rings: pointers into the mmapped
// producer, consumer and flags words, the mask, and the cached indices.
type ring struct {
	producer *uint32
	consumer *uint32
	flags    *uint32
	mask     uint32
	size     uint32
	// For a producer ring: cachedProd is our next free index (not yet
	// published beyond what Submit did), cachedCons is the last consumer
	// index seen + size (so cachedCons-cachedProd = free slots).
	// For a consumer ring: cachedCons is our next index to read, cachedProd
	// the last producer index seen.
	cachedProd uint32
	cachedCons uint32
}

// Size is the number of slots.
func (r *ring) Size() uint32 { return r.size }

// NeedWakeup reports whether the kernel asked to be kicked for this ring
// (XDP_RING_NEED_WAKEUP, only with XDP_USE_NEED_WAKEUP).
func (r *ring) NeedWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}

// prodRing is the index logic of a ring we produce into (fill, TX).
type prodRing struct{ ring }

// Free returns the number of slots free to reserve, refreshing the consumer
// index only when fewer than want are known to be free.
func (r *prodRing) Free(want uint32) uint32 {
	free := r.cachedCons - r.cachedProd
	if free >= want {
		return free
	}
	r.cachedCons = atomic.LoadUint32(r.consumer) + r.size
	return r.cachedCons - r.cachedProd
}

// Reserve reserves n slots (all or nothing) and returns the first index.
func (r *prodRing) Reserve(n uint32) (idx uint32, ok bool) {
	if r.Free(n) < n {
		return 0, false
	}
	idx = r.cachedProd
	r.cachedProd += n
	return idx, true
}

// Cancel gives back the last n reserved, unsubmitted slots.
func (r *prodRing) Cancel(n uint32) { r.cachedProd -= n }

// Pending returns how many reserved slots are not yet submitted.
func (r *prodRing) Pending() uint32 { return r.cachedProd - atomic.LoadUint32(r.producer) }

// Submit publishes every reserved slot to the kernel (release store).
func (r *prodRing) Submit() { atomic.StoreUint32(r.producer, r.cachedProd) }

// consRing is the index logic of a ring we consume from (RX, completion).
type consRing struct{ ring }

// Available returns how many entries are ready, refreshing the producer
// index (acquire load) only when none are known.
func (r *consRing) Available() uint32 {
	n := r.cachedProd - r.cachedCons
	if n == 0 {
		r.cachedProd = atomic.LoadUint32(r.producer)
		n = r.cachedProd - r.cachedCons
	}
	return n
}

// Peek returns up to max ready entries: the first index and the count.
func (r *consRing) Peek(max uint32) (idx, n uint32) {
	n = r.Available()
	if n > max {
		n = max
	}
	idx = r.cachedCons
	r.cachedCons += n
	return idx, n
}

// Release hands n peeked entries back to the kernel (release store).
func (r *consRing) Release(n uint32) {
	atomic.StoreUint32(r.consumer, atomic.LoadUint32(r.consumer)+n)
}

// FillRing carries free UMEM addresses to the kernel (ef_vi: RX descriptor
// ring).
type FillRing struct {
	prodRing
	descs []uint64
}

// Set writes the address at reserved index idx.
func (r *FillRing) Set(idx uint32, addr uint64) { r.descs[idx&r.mask] = addr }

// CompRing returns the addresses of transmitted frames.
type CompRing struct {
	consRing
	descs []uint64
}

// Get reads the address at peeked index idx.
func (r *CompRing) Get(idx uint32) uint64 { return r.descs[idx&r.mask] }

// RxRing carries received frames from the kernel.
type RxRing struct {
	consRing
	descs []Desc
}

// Get returns the descriptor at peeked index idx.
func (r *RxRing) Get(idx uint32) *Desc { return &r.descs[idx&r.mask] }

// TxRing carries frames to transmit to the kernel.
type TxRing struct {
	prodRing
	descs []Desc
}

// Set writes a descriptor at reserved index idx.
func (r *TxRing) Set(idx uint32, addr uint64, length, options uint32) {
	d := &r.descs[idx&r.mask]
	d.Addr = addr
	d.Len = length
	d.Options = options
}

func initRing(r *ring, mem []byte, off unix.XDPRingOffset, size uint32) {
	base := unsafe.Pointer(&mem[0])
	r.producer = (*uint32)(unsafe.Add(base, off.Producer))
	r.consumer = (*uint32)(unsafe.Add(base, off.Consumer))
	r.flags = (*uint32)(unsafe.Add(base, off.Flags))
	r.size = size
	r.mask = size - 1
}

func u64s(mem []byte, off uint64, n uint32) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(&mem[off])), n)
}

func descs(mem []byte, off uint64, n uint32) []Desc {
	return unsafe.Slice((*Desc)(unsafe.Pointer(&mem[off])), n)
}
