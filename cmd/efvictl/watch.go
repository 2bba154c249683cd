package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
)

// viRate is one VI's counters and their rates since the previous refresh.
type viRate struct {
	api.VIStats
	// Rates per second; nil on the first refresh (nothing to compare).
	Rates *rates `json:"rates,omitempty"`
}

type rates struct {
	RxPPS    float64 `json:"rxPps"`
	RxMbps   float64 `json:"rxMbps"`
	TxPPS    float64 `json:"txPps"`
	TxMbps   float64 `json:"txMbps"`
	NodescPS float64 `json:"rxNodescPs"`
	SpoofPS  float64 `json:"txSpoofPs"`
}

// delta is cur-prev, or cur when the counter went back (the VI was
// recreated and its counters reset).
func delta(cur, prev uint64) float64 {
	if cur < prev {
		return float64(cur)
	}
	return float64(cur - prev)
}

// withRates pairs cur with prev by device and computes per-second rates.
func withRates(prev, cur []api.VIStats, dt time.Duration) []viRate {
	old := map[string]api.VIStats{}
	for _, s := range prev {
		old[s.Device] = s
	}
	out := make([]viRate, 0, len(cur))
	for _, s := range cur {
		r := viRate{VIStats: s}
		if p, ok := old[s.Device]; ok && dt > 0 {
			sec := dt.Seconds()
			r.Rates = &rates{
				RxPPS: delta(s.RxPackets, p.RxPackets) / sec, RxMbps: delta(s.RxBytes, p.RxBytes) * 8 / 1e6 / sec,
				TxPPS: delta(s.TxPackets, p.TxPackets) / sec, TxMbps: delta(s.TxBytes, p.TxBytes) * 8 / 1e6 / sec,
				SpoofPS: delta(s.TxSpoofDrops, p.TxSpoofDrops) / sec,
			}
			if s.Socket != nil && p.Socket != nil {
				r.Rates.NodescPS = delta(s.Socket.RxNoDescDrops, p.Socket.RxNoDescDrops) / sec
			}
		}
		out = append(out, r)
	}
	return out
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// watch refreshes the stats every o.interval until ctx ends or o.count
// refreshes. JSON output is one object per refresh per line.
func watch(ctx context.Context, o opts, w io.Writer, get func(context.Context) ([]api.VIStats, error)) error {
	var prev []api.VIStats
	var prevAt time.Time
	clear := o.output == "table" && isTerminal(w)
	t := time.NewTicker(o.interval)
	defer t.Stop()
	for n := 0; o.count == 0 || n < o.count; n++ {
		if n > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
		cur, err := get(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		now := time.Now()
		rs := withRates(prev, cur, now.Sub(prevAt))
		prev, prevAt = cur, now
		if o.output == "json" {
			if err := json.NewEncoder(w).Encode(struct {
				Time time.Time `json:"time"`
				VIs  []viRate  `json:"vis"`
			}{now, rs}); err != nil {
				return err
			}
			continue
		}
		if clear {
			fmt.Fprint(w, "\033[H\033[2J")
		} else if n > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "efvictl watch: every %v, %s (Ctrl-C to stop)\n", o.interval, now.Format(time.TimeOnly))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		watchTable(tw, rs)
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func watchTable(w io.Writer, rs []viRate) {
	fmt.Fprintln(w, "VI\tNAMESPACE\tPOD\tRX PPS\tRX Mbit/s\tTX PPS\tTX Mbit/s\tNODESC/s\tSPOOF/s\tRX PKTS\tTX PKTS\tRX NODESC\tRX RING FULL")
	for _, r := range rs {
		nodesc, full, _, _ := sockCols(r.VIStats)
		rate := func(f func(*rates) float64, prec int) string {
			if r.Rates == nil {
				return "-"
			}
			return fmt.Sprintf("%.*f", prec, f(r.Rates))
		}
		nodescRate := rate(func(x *rates) float64 { return x.NodescPS }, 0)
		if r.Socket == nil {
			nodescRate = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", r.Device, r.Namespace, r.Pod,
			rate(func(x *rates) float64 { return x.RxPPS }, 0), rate(func(x *rates) float64 { return x.RxMbps }, 2),
			rate(func(x *rates) float64 { return x.TxPPS }, 0), rate(func(x *rates) float64 { return x.TxMbps }, 2),
			nodescRate, rate(func(x *rates) float64 { return x.SpoofPS }, 0),
			r.RxPackets, r.TxPackets, nodesc, full)
	}
}
