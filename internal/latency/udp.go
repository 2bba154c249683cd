// Package latency measures round trips the way the tools and the benchmark
// both need: a kernel UDP pinger and echo (the baseline a VI is compared
// with), the Pinger interface any transport implements, and percentile
// summaries of the samples. It links nothing but the standard library and
// x/sys, so the shipped eflatency stays small.
package latency

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// UDPSocket opens a kernel UDP socket bound to addr in the calling thread's
// network namespace. Blocking sockets get a 100 ms receive timeout so their
// loops notice cancellation.
func UDPSocket(addr netip.AddrPort, blocking bool) (int, error) {
	typ := unix.SOCK_DGRAM | unix.SOCK_CLOEXEC
	if !blocking {
		typ |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(unix.AF_INET, typ, 0)
	if err != nil {
		return -1, fmt.Errorf("udp socket: %w", err)
	}
	if blocking {
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	if err := unix.Bind(fd, sockaddr(addr)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", addr, err)
	}
	return fd, nil
}

func sockaddr(a netip.AddrPort) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
}

// UDPEcho answers every datagram on fd to its sender until ctx ends. spin
// selects a busy-polling reader (MSG_DONTWAIT in a loop, the lowest-latency
// kernel socket setup) over a blocking one. It owns fd and closes it.
func UDPEcho(ctx context.Context, fd int, spin bool) error {
	defer unix.Close(fd)
	return UDPEchoFD(ctx, fd, spin)
}

// UDPEchoFD is UDPEcho without taking ownership of fd.
func UDPEchoFD(ctx context.Context, fd int, spin bool) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, 2048)
	flags := 0
	if spin {
		flags = unix.MSG_DONTWAIT
	}
	for polls := 0; ; polls++ {
		n, from, err := unix.Recvfrom(fd, buf, flags)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				if (!spin || polls&0xfff == 0) && ctx.Err() != nil {
					return nil
				}
				continue
			}
			return fmt.Errorf("echo recvfrom: %w", err)
		}
		if err := unix.Sendto(fd, buf[:n], 0, from); err != nil {
			return fmt.Errorf("echo sendto: %w", err)
		}
	}
}

// Pinger sends one request and waits for its echo.
type Pinger interface {
	// Ping sends payload and returns the round-trip time of its echo.
	Ping(payload []byte) (time.Duration, error)
	Close() error
}

// UDPPinger is a busy-spinning kernel UDP pinger.
type UDPPinger struct {
	fd   int
	to   unix.Sockaddr
	buf  []byte
	wait time.Duration
}

// NewUDPPinger binds a non-blocking socket to local (in the calling thread's
// namespace) and pings remote. Each ping gives up after timeout.
func NewUDPPinger(local, remote netip.AddrPort, timeout time.Duration) (*UDPPinger, error) {
	fd, err := UDPSocket(local, false)
	if err != nil {
		return nil, err
	}
	return &UDPPinger{fd: fd, to: sockaddr(remote), buf: make([]byte, 2048), wait: timeout}, nil
}

// Ping implements Pinger.
func (p *UDPPinger) Ping(payload []byte) (time.Duration, error) {
	t0 := time.Now()
	if err := unix.Sendto(p.fd, payload, 0, p.to); err != nil {
		return 0, fmt.Errorf("ping sendto: %w", err)
	}
	for i := 0; ; i++ {
		n, _, err := unix.Recvfrom(p.fd, p.buf, unix.MSG_DONTWAIT)
		if err == nil {
			if n != len(payload) {
				return 0, fmt.Errorf("echo of %d bytes, sent %d", n, len(payload))
			}
			return time.Since(t0), nil
		}
		if !errors.Is(err, unix.EAGAIN) {
			return 0, fmt.Errorf("ping recvfrom: %w", err)
		}
		if i&0x3ff == 0 && time.Since(t0) > p.wait {
			return 0, fmt.Errorf("no echo within %v", p.wait)
		}
	}
}

// Close implements Pinger.
func (p *UDPPinger) Close() error { return unix.Close(p.fd) }

// MeasureRTT runs warm pings, then n measured pings, on a locked thread.
func MeasureRTT(p Pinger, size, warm, n int) (Latency, error) {
	samples, err := AppendRTT(nil, p, size, warm, n)
	if err != nil {
		return Latency{}, err
	}
	return Summarize(samples), nil
}

// AppendRTT runs warm pings, then n measured pings, on a locked thread and
// appends the measured round trips to samples.
func AppendRTT(samples []time.Duration, p Pinger, size, warm, n int) ([]time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	payload := make([]byte, size)
	samples = slices.Grow(samples, n)
	for i := 0; i < warm+n; i++ {
		payload[0] = byte(i)
		d, err := p.Ping(payload)
		if err != nil {
			return samples, fmt.Errorf("ping %d: %w", i, err)
		}
		if i >= warm {
			samples = append(samples, d)
		}
	}
	return samples, nil
}
