package bench

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Chart size in pixels (at ChartDPI).
const (
	ChartWidth  = 1400
	ChartHeight = 520
	ChartDPI    = 96
)

// chartColors: p50 / 64 B dark, p99 / 1472 B light (colour-blind safe).
var chartColors = [2]color.Color{color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xff, 0x7f, 0x0e, 0xff}}

// RenderChart draws the comparison as a PNG of ChartWidth×ChartHeight
// pixels: on the left, grouped bars of RTT p50 and p99 (µs) per path; on the
// right, RX Mpps at 64 B and 1472 B per path. Paths are in results' order;
// unmeasured figures are drawn as zero-height bars.
func RenderChart(w io.Writer, results []Result, title string) error {
	if len(results) == 0 {
		return fmt.Errorf("chart: no results to draw")
	}
	names := make([]string, len(results))
	for i, r := range results {
		names[i] = r.Name
	}
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	rtt, err := groupedBars(title+": RTT (lower is better)", "µs", names,
		[]string{"p50", "p99"}, func(r Result, k int) float64 {
			if k == 0 {
				return us(r.RTT.P50)
			}
			return us(r.RTT.P99)
		}, results)
	if err != nil {
		return err
	}
	rate, err := groupedBars(title+": RX rate (higher is better)", "Mpps", names,
		[]string{"64 B", "1472 B"}, func(r Result, k int) float64 {
			f, ok := r.FloodAt([]int{64, 1472}[k])
			if !ok {
				if k == 0 {
					return r.PPS / 1e6
				}
				return 0
			}
			return f.PPS / 1e6
		}, results)
	if err != nil {
		return err
	}
	px := func(n int) vg.Length { return vg.Length(n) * vg.Inch / ChartDPI }
	c := vgimg.NewWith(vgimg.UseWH(px(ChartWidth), px(ChartHeight)), vgimg.UseDPI(ChartDPI), vgimg.UseBackgroundColor(color.White))
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 6, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{rtt, rate}}
	canvases := plot.Align(plots, tiles, dc)
	for i, p := range plots[0] {
		p.Draw(canvases[0][i])
	}
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(w); err != nil {
		return fmt.Errorf("chart: encode PNG: %w", err)
	}
	return nil
}

// groupedBars is one panel: for every path a group of len(series) bars.
func groupedBars(title, unit string, names, series []string, value func(Result, int) float64, results []Result) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = unit
	p.Y.Min = 0
	p.Legend.Top = true
	width := vg.Points(22)
	top := 0.0
	for k, s := range series {
		vs := make(plotter.Values, len(results))
		for i, r := range results {
			vs[i] = max(value(r, k), 0)
			top = max(top, vs[i])
		}
		b, err := plotter.NewBarChart(vs, width)
		if err != nil {
			return nil, fmt.Errorf("chart %q: %w", title, err)
		}
		b.Color = chartColors[k%len(chartColors)]
		b.LineStyle.Width = 0
		b.Offset = vg.Length(float64(k)-float64(len(series)-1)/2) * width
		p.Add(b)
		p.Legend.Add(s, b)
		// The value above each bar: one tall bar must not hide the others.
		xys := plotter.XYLabels{XYs: make(plotter.XYs, len(vs)), Labels: make([]string, len(vs))}
		for i, v := range vs {
			xys.XYs[i] = plotter.XY{X: float64(i), Y: v}
			xys.Labels[i] = fmt.Sprintf("%.3g", v)
		}
		l, err := plotter.NewLabels(xys)
		if err != nil {
			return nil, fmt.Errorf("chart %q: %w", title, err)
		}
		for i := range l.TextStyle {
			l.TextStyle[i].XAlign = draw.XCenter
			l.TextStyle[i].Font.Size = vg.Points(8)
		}
		l.Offset = vg.Point{X: b.Offset, Y: vg.Points(2)}
		p.Add(l)
	}
	p.Y.Max = 1.25 * max(top, 1e-3) // room for the legend above the bars
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p, nil
}

// WriteChart writes RenderChart's PNG to path (atomically: a temporary
// file in the same directory, then rename).
func WriteChart(path string, results []Result, title string) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".chart-*.png")
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	defer os.Remove(f.Name())
	if err := RenderChart(f, results, title); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	return nil
}
