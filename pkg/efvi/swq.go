package efvi

import "sync/atomic"

// swQueue is a bounded lock-free multi-producer single-consumer queue of
// 16-bit software events (Vyukov's bounded queue with per-slot sequence
// numbers). The consumer's "anything there?" check is one atomic load.
type swQueue struct {
	tail  atomic.Uint32 // next slot producers claim
	head  uint32        // consumer only
	mask  uint32
	slots []swSlot
}

type swSlot struct {
	seq  atomic.Uint32
	data uint16
}

func newSWQueue(size uint32) *swQueue {
	q := &swQueue{mask: size - 1, slots: make([]swSlot, size)}
	for i := range q.slots {
		q.slots[i].seq.Store(uint32(i))
	}
	return q
}

// put adds data; false when full.
func (q *swQueue) put(data uint16) bool {
	for {
		pos := q.tail.Load()
		s := &q.slots[pos&q.mask]
		seq := s.seq.Load()
		switch d := int32(seq - pos); {
		case d == 0:
			if q.tail.CompareAndSwap(pos, pos+1) {
				s.data = data
				s.seq.Store(pos + 1)
				return true
			}
		case d < 0:
			return false
		}
	}
}

// ready reports whether get would return something.
func (q *swQueue) ready() bool {
	return q.slots[q.head&q.mask].seq.Load() == q.head+1
}

// get removes the oldest entry.
func (q *swQueue) get() (uint16, bool) {
	s := &q.slots[q.head&q.mask]
	if s.seq.Load() != q.head+1 {
		return 0, false
	}
	d := s.data
	s.seq.Store(q.head + q.mask + 1)
	q.head++
	return d, true
}
