package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
)

// capture writes a pcap of target's RX and TX frames to o.write.
func capture(ctx context.Context, o opts, c *api.Client, target string, stdout, stderr io.Writer) error {
	if target == "" {
		return errors.New("which VI? give a pod (namespace/name) or a VI (<port>-vi<N>); efvictl vis lists them")
	}
	if o.write == "" {
		return errors.New("-w is required: a pcap file to write, or - for stdout (e.g. efvictl capture pod -w - | tcpdump -n -r -)")
	}
	var out io.Writer = stdout
	var f *os.File
	if o.write == "-" {
		if isTerminal(stdout) {
			return errors.New("refusing to write a binary pcap to a terminal: use -w file.pcap, or pipe stdout into tcpdump -n -r -")
		}
	} else {
		var err error
		if f, err = os.OpenFile(o.write, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
			return fmt.Errorf("open pcap file: %w", err)
		}
		out = f
	}
	sum, err := c.Capture(ctx, target, api.CaptureOptions{SnapLen: uint32(o.snaplen), Count: o.frames, Timeout: o.timeout}, out,
		func() { fmt.Fprintf(stderr, "efvictl: capturing %s (Ctrl-C to stop)\n", target) })
	if f != nil {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("write pcap file: %w", cerr)
		}
	}
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "efvictl: capture interrupted")
		return nil
	}
	fmt.Fprintf(stderr, "efvictl: %d frames captured (%d rx, %d tx), %d dropped\n", sum.Rx+sum.Tx, sum.Rx, sum.Tx, sum.Dropped)
	return nil
}
