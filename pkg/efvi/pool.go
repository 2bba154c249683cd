package efvi

import "golang.org/x/sys/unix"

func dupCloexec(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }

// BufPool is a LIFO free list of buffer indices, for apps that let the SDK
// keep the RX ring full (RefillFrom). Not safe for concurrent use.
type BufPool struct {
	free []int32
}

// NewBufPool returns a pool holding buffers [first, first+n).
func NewBufPool(first, n int) *BufPool {
	p := &BufPool{free: make([]int32, 0, n)}
	for i := first + n - 1; i >= first; i-- {
		p.free = append(p.free, int32(i))
	}
	return p
}

// Len is the number of free buffers.
func (p *BufPool) Len() int { return len(p.free) }

// Get takes a buffer; false when empty.
func (p *BufPool) Get() (int, bool) {
	n := len(p.free)
	if n == 0 {
		return 0, false
	}
	i := p.free[n-1]
	p.free = p.free[:n-1]
	return int(i), true
}

// Put returns buffer i. It never allocates past the capacity NewBufPool
// gave it as long as each buffer is put back once.
func (p *BufPool) Put(i int) { p.free = append(p.free, int32(i)) }

// RefillFrom posts free buffers from p (addr = Memory().Addr(i), id = i)
// until the RX ring is full or p is empty, then pushes; it returns how
// many it posted. Calling it after every poll that returned RX events keeps
// the fill ring nearly full, which is what avoids no-descriptor drops.
func (v *VI) RefillFrom(p *BufPool) int {
	space := v.ReceiveSpace()
	n := 0
	for n < space {
		i, ok := p.Get()
		if !ok {
			break
		}
		if v.ReceiveInit(v.mem.Addr(i), RqID(i)) != nil {
			p.Put(i)
			break
		}
		n++
	}
	if n > 0 {
		v.ReceivePush()
	}
	return n
}
