// Command efvictl shows what kube-efvi's node agent knows about the node's
// VIs: ports, VIs by pod, filters with hit counters, per-VI counters
// (including RX no-descriptor drops, the ef_vi port_rx_nodesc_drops), a
// refreshing view, and a pcap capture of a VI's RX and TX like
// onload_tcpdump. It talks to the agent's diagnostics socket
// (pkg/introspect), so it runs as root on the node or through
// `kubectl exec` into the agent pod.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
)

const usage = `efvictl: kube-efvi diagnostics (run as root on the node, or kubectl exec into the agent pod).

Usage:
  efvictl [flags] ports                      the node's ports and their data planes
  efvictl [flags] vis     [target]           VIs by pod: slot, veths, allocation, its pinned memory
  efvictl [flags] filters [target]           filters with owner and hit counter
  efvictl [flags] stats   [target]           per-VI counters (ethtool -S / stackdump)
  efvictl [flags] watch   [target]           refreshing stats with rates (-interval 1s)
  efvictl [flags] capture <target> -w file.pcap [-c N] [-timeout 10s] [-s snaplen]
                                             pcap of the VI's RX and TX (onload_tcpdump)

A target is a pod ("namespace/name" or "name") or a VI ("<port>-vi<N>").

Counters: rx/tx packets and bytes count frames delivered to / sent by the
VI; tx_spoof drops are frames sent from a source the VI does not own;
rx_nodesc are frames dropped because the app had no RX buffer posted
(ef_vi port_rx_nodesc_drops); rx_ring_full are event-queue overflows;
rx/tx_inval are bad descriptors the app posted. Socket counters show "-"
when the agent holds no live socket for the VI.

Flags (before or after the command):
`

// opts are the flags every command accepts.
type opts struct {
	socket   string
	output   string
	interval time.Duration
	count    int
	write    string
	frames   uint64
	timeout  time.Duration
	snaplen  uint
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func newFlags(o *opts, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("efvictl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.socket, "socket", api.DefaultSocket, "the agent's diagnostics socket")
	fs.StringVar(&o.output, "o", "table", "output: table or json")
	fs.DurationVar(&o.interval, "interval", time.Second, "watch: refresh interval")
	fs.IntVar(&o.count, "n", 0, "watch: stop after this many refreshes (0: until interrupted)")
	fs.StringVar(&o.write, "w", "", `capture: pcap file to write ("-": stdout)`)
	fs.Uint64Var(&o.frames, "c", 0, "capture: stop after this many frames (0: no limit)")
	fs.DurationVar(&o.timeout, "timeout", 0, "capture: stop after this long (0: until interrupted or -c)")
	fs.UintVar(&o.snaplen, "s", 0, "capture: bytes kept per frame (0: 65535)")
	return fs
}

// parseArgs accepts flags anywhere among the positional arguments.
func parseArgs(args []string, stderr io.Writer) (opts, []string, error) {
	var o opts
	fs := newFlags(&o, stderr)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return o, nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if o.output != "table" && o.output != "json" {
		return o, nil, fmt.Errorf("-o %q: want table or json", o.output)
	}
	if o.interval <= 0 {
		return o, nil, fmt.Errorf("-interval %v: want a positive duration such as 1s", o.interval)
	}
	if o.snaplen > 65535 {
		return o, nil, fmt.Errorf("-s %d: want 0..65535", o.snaplen)
	}
	return o, pos, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, pos, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "efvictl: %v (see efvictl -h)\n", err)
		return 2
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, "efvictl: no command; want one of ports, vis, filters, stats, watch, capture (see efvictl -h)\n")
		return 2
	}
	cmd, rest := pos[0], pos[1:]
	target := ""
	maxPos := 1
	if cmd == "ports" {
		maxPos = 0
	}
	if len(rest) > maxPos {
		fmt.Fprintf(stderr, "efvictl %s: unexpected arguments %q (one target at most)\n", cmd, rest[maxPos:])
		return 2
	}
	if len(rest) == 1 {
		target = rest[0]
	}
	c := api.NewClient(o.socket)
	defer c.Close()
	switch cmd {
	case "ports":
		err = show(ctx, o, stdout, c.Ports, portsTable)
	case "vis":
		err = show(ctx, o, stdout, func(ctx context.Context) ([]api.VIInfo, error) { return c.VIs(ctx, target) }, visTable)
	case "filters":
		err = show(ctx, o, stdout, func(ctx context.Context) ([]api.FilterInfo, error) { return c.Filters(ctx, target) }, filtersTable)
	case "stats":
		err = show(ctx, o, stdout, func(ctx context.Context) ([]api.VIStats, error) { return c.Stats(ctx, target) }, statsTable)
	case "watch":
		err = watch(ctx, o, stdout, func(ctx context.Context) ([]api.VIStats, error) { return c.Stats(ctx, target) })
	case "capture":
		err = capture(ctx, o, c, target, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "efvictl: unknown command %q; want one of ports, vis, filters, stats, watch, capture\n", cmd)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "efvictl %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func show[T any](ctx context.Context, o opts, w io.Writer, get func(context.Context) (T, error), table func(io.Writer, T)) error {
	v, err := get(ctx)
	if err != nil {
		return err
	}
	if o.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	table(tw, v)
	return tw.Flush()
}

func portsTable(w io.Writer, ports []api.PortInfo) {
	fmt.Fprintln(w, "PORT\tIFINDEX\tMAC\tMTU\tDATA PLANE\tXDP PROG\tVIS\tCAPTURING")
	for _, p := range ports {
		fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%s\t%d\t%d\t%s\n", p.Name, p.Ifindex, p.MAC, p.MTU, p.DataPlane, p.XDPProgramID, p.VIs, orDash(strings.Join(p.Capturing, ",")))
	}
}

func visTable(w io.Writer, vis []api.VIInfo) {
	fmt.Fprintln(w, "VI\tNAMESPACE\tPOD\tPOOL\tSLOT\tVETH\tPEER (XSK)\tSOCKET\tALLOCATION\tPINNED\tALLOC VIS")
	for _, v := range vis {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\n", v.Device, v.Namespace, v.Pod, v.Pool, v.Slot, orDash(v.Veth), orDash(v.PeerVeth), yesNo(v.Socket), v.Allocation, mib(v.AllocationPinnedBytes), v.AllocationVIs)
	}
}

// mib shows a byte count in MiB (the allocation's pinned memory).
func mib(b uint64) string { return fmt.Sprintf("%.1fMi", float64(b)/(1<<20)) }

func filtersTable(w io.Writer, fs []api.FilterInfo) {
	fmt.Fprintln(w, "VI\tNAMESPACE\tPOD\tFILTER\tOWNER\tCOOKIE\tHITS")
	for _, f := range fs {
		owner := f.Owner
		if f.Attachment != "" {
			owner += " (" + f.Attachment + ")"
		}
		hits := strconv.FormatUint(f.Hits, 10)
		if f.HitsError != "" {
			hits = "? (" + f.HitsError + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", f.Device, f.Namespace, f.Pod, f.Spec, owner, f.Cookie, hits)
	}
}

func statsTable(w io.Writer, st []api.VIStats) {
	fmt.Fprintln(w, "VI\tNAMESPACE\tPOD\tRX PKTS\tRX BYTES\tTX PKTS\tTX BYTES\tTX SPOOF\tRX NODESC\tRX RING FULL\tRX INVAL\tTX INVAL\tRX REDIR ERR")
	for _, s := range st {
		nodesc, full, rxInval, txInval := sockCols(s)
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%d\n", s.Device, s.Namespace, s.Pod,
			s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes, s.TxSpoofDrops, nodesc, full, rxInval, txInval, s.RxRedirectErrors)
	}
}

func sockCols(s api.VIStats) (nodesc, full, rxInval, txInval string) {
	if s.Socket == nil {
		return "-", "-", "-", "-"
	}
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	return u(s.Socket.RxNoDescDrops), u(s.Socket.RxRingFull), u(s.Socket.RxInvalidDescs), u(s.Socket.TxInvalidDescs)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
