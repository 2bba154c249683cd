package viservice_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/efvi"
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

const childEnv = "VISERVICE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(attackEnv) != "" {
		if err := attackMain(os.Getenv(attackEnv)); err != nil {
			fmt.Fprintf(os.Stderr, "attacker: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(childEnv) != "" {
		if err := podMain(); err != nil {
			fmt.Fprintf(os.Stderr, "pod: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type received struct {
	srcMAC  frame.MAC
	src     netip.AddrPort
	payload string
}

// podMain is what a pod does with the SDK: no privileges, only the socket.
func podMain() error {
	if os.Getuid() != 65534 {
		return fmt.Errorf("runs as uid %d, want 65534", os.Getuid())
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "CapEff:") && strings.TrimSpace(l[7:]) != "0000000000000000" {
			return fmt.Errorf("has capabilities: %s", l)
		}
	}
	ctx := context.Background()
	d, err := efvi.DialAgent(ctx, "")
	if err != nil {
		return err
	}
	defer d.Close()
	info := d.Info()
	if len(info.Addrs) == 0 {
		return errors.New("agent told no pod addresses")
	}
	pd, err := d.AllocPD(ctx, efvi.PDRequest{VLAN: -1})
	if err != nil {
		return err
	}
	mem, err := pd.RegisterMemory(ctx, 1024)
	if err != nil {
		return err
	}
	vi, err := pd.AllocVI(ctx, mem, efvi.VIRequest{EvqCap: -1, RxqCap: -1, TxqCap: -1}, efvi.Options{})
	if err != nil {
		return err
	}
	// Policy, as ef_vi answers it.
	own, err := filter.ParseWithDefaultHost("udp:5000", info.Addrs[0])
	if err != nil {
		return err
	}
	if _, err := vi.FilterAdd(ctx, own); err != nil {
		return fmt.Errorf("own filter: %w", err)
	}
	for _, c := range []struct {
		spec  string
		errno syscall.Errno
	}{
		{"udp:" + info.Addrs[0].String() + ":5000", syscall.EEXIST},
		{"udp:10.1.2.3:5000", syscall.EPERM},
		{"sniff", syscall.EPERM},
		{"udp:239.1.2.3:5000", syscall.EPERM},
	} {
		s, err := filter.Parse(c.spec)
		if err != nil {
			return err
		}
		if _, err := vi.FilterAdd(ctx, s); !errors.Is(err, c.errno) {
			return fmt.Errorf("filter %s: got %v, want %v", c.spec, err, c.errno)
		}
	}
	const rxBufs = 512
	for i := 0; i < rxBufs; i++ {
		if err := vi.ReceiveInit(mem.Addr(i), efvi.RqID(i)); err != nil {
			return fmt.Errorf("post rx %d: %w", i, err)
		}
	}
	vi.ReceivePush()
	fmt.Println("READY")

	var got []received
	evs := make([]efvi.Event, 64)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		switch f[0] {
		case "RECV":
			var want int
			fmt.Sscan(f[1], &want)
			n := 0
			deadline := time.Now().Add(10 * time.Second)
			for n < want {
				if time.Now().After(deadline) {
					return fmt.Errorf("received %d of %d", n, want)
				}
				k := vi.EventQPoll(evs)
				for _, ev := range evs[:k] {
					if ev.Type != efvi.EventRX {
						return fmt.Errorf("unexpected event %+v", ev)
					}
					b := vi.RxFrame(&ev)
					var p frame.Packet
					if err := frame.Parse(b, &p); err != nil {
						return fmt.Errorf("parse rx frame: %w", err)
					}
					got = append(got, received{p.SrcMAC, netip.AddrPortFrom(p.Src, p.SrcPort), string(p.Payload(b))})
					n++
					if err := vi.ReceivePost(mem.Addr(int(ev.RqID)), ev.RqID); err != nil {
						return err
					}
				}
			}
			fmt.Printf("GOT %d\n", n)
		case "ECHO":
			me := netip.AddrPortFrom(info.Addrs[0], 5000)
			send := func(i int, src netip.AddrPort, r received, payload string) error {
				fl := frame.UDPFlow{SrcMAC: info.MAC, DstMAC: r.srcMAC, Src: src, Dst: r.src}
				n, err := fl.Build(mem.Buf(rxBufs+i), []byte(payload))
				if err != nil {
					return err
				}
				return vi.Transmit(mem.Addr(rxBufs+i), n, efvi.RqID(rxBufs+i))
			}
			b4 := info.Addrs[0].As4()
			b4[3] = 99 // a neighbour's address: not the pod's
			spoof := netip.AddrPortFrom(netip.AddrFrom4(b4), 5000)
			if err := send(0, spoof, got[0], "spoof"); err != nil {
				return err
			}
			for i, r := range got {
				if err := send(1+i, me, r, "echo-"+r.payload); err != nil {
					return err
				}
			}
			done := 0
			ids := make([]efvi.RqID, efvi.TransmitBatch)
			deadline := time.Now().Add(10 * time.Second)
			for done < len(got)+1 {
				if time.Now().After(deadline) {
					return fmt.Errorf("%d of %d TX completions", done, len(got)+1)
				}
				k := vi.EventQPoll(evs)
				for _, ev := range evs[:k] {
					if ev.Type != efvi.EventTX {
						return fmt.Errorf("unexpected event %+v", ev)
					}
					for _, id := range ids[:vi.TransmitUnbundle(&ev, ids)] {
						if int(id) != rxBufs+done {
							return fmt.Errorf("TX completion %d has id %d, want %d", done, id, rxBufs+done)
						}
						done++
					}
				}
			}
			fmt.Printf("SENT %d\n", len(got))
			got = got[:0]
		case "STATS":
			st, err := vi.BackendStats(ctx)
			if err != nil {
				return err
			}
			var kv []string
			for k, v := range st {
				kv = append(kv, fmt.Sprintf("%s=%d", k, v))
			}
			sort.Strings(kv)
			fmt.Println("STATS " + strings.Join(kv, " "))
		case "EXIT":
			fmt.Println("BYE")
			return nil
		default:
			return fmt.Errorf("unknown command %q", f[0])
		}
	}
	return in.Err()
}
