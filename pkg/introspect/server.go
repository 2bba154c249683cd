package introspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kube-efvi/kube-efvi/pkg/dataplane"
	"github.com/kube-efvi/kube-efvi/pkg/introspect/api"
	"github.com/kube-efvi/kube-efvi/pkg/metrics"
)

// Capture captures the RX and TX frames of the VIs a target names into w
// as pcap, until opts.Count frames, opts.Timeout or ctx. started is called
// once every capture switch is on, before anything is written.
func (in *Inspector) Capture(ctx context.Context, target string, opts api.CaptureOptions, w io.Writer, started func()) (api.CaptureSummary, error) {
	var sum api.CaptureSummary
	vis, err := in.resolve(target)
	if err != nil {
		return sum, err
	}
	if target == "" {
		return sum, &api.Error{Status: http.StatusBadRequest, Msg: "capture needs a target: a pod (namespace/name) or a VI (<port>-vi<N>)"}
	}
	var caps []*dataplane.Capture
	defer func() {
		for _, c := range caps {
			if err := c.Close(); err != nil {
				in.log.Warn("stop capture", "err", err)
			}
		}
	}()
	for _, v := range vis {
		if v.dataPlane == nil {
			continue
		}
		c, err := in.capturer(v.port)
		if err != nil {
			return sum, err
		}
		cp, err := c.Start(v.slot, opts.SnapLen)
		if errors.Is(err, syscall.EBUSY) {
			return sum, &api.Error{Status: http.StatusConflict, Msg: fmt.Sprintf("%s is already being captured; stop the other capture first", v.device)}
		}
		if err != nil {
			return sum, fmt.Errorf("capture %s: %w", v.device, err)
		}
		caps = append(caps, cp)
	}
	if len(caps) == 0 {
		return sum, notFound("%s: no VI in the data plane yet (the pod has not opened one and the CNI installed no filters)", target)
	}
	snap := opts.SnapLen
	if snap == 0 || snap > dataplane.MaxSnapLen {
		snap = dataplane.MaxSnapLen
	}
	if started != nil {
		started()
	}
	pw, err := newPcapWriter(w, snap)
	if err != nil {
		return sum, err
	}
	flush(w)

	merged := make(chan dataplane.Frame)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range caps {
		wg.Add(1)
		go func(c *dataplane.Capture) {
			defer wg.Done()
			for {
				select {
				case f, ok := <-c.Frames():
					if !ok {
						return
					}
					select {
					case merged <- f:
					case <-done:
						return
					}
				case <-done:
					return
				}
			}
		}(c)
	}
	defer wg.Wait()
	defer close(done)
	var timeout <-chan time.Time
	if opts.Timeout > 0 {
		t := time.NewTimer(opts.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	defer func() {
		for _, c := range caps {
			d, l := c.Dropped()
			sum.Dropped += d + l
		}
	}()
	for opts.Count == 0 || sum.Rx+sum.Tx < opts.Count {
		select {
		case <-ctx.Done():
			return sum, nil
		case <-timeout:
			return sum, nil
		case f := <-merged:
			if err := pw.writeFrame(f.Time, f.Data, f.Len); err != nil {
				return sum, err
			}
			flush(w)
			if f.Dir == dataplane.CaptureTX {
				sum.Tx++
			} else {
				sum.Rx++
			}
		}
	}
	return sum, nil
}

func flush(w io.Writer) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// Handler serves the endpoints in the package doc.
func (in *Inspector) Handler() http.Handler {
	mux := http.NewServeMux()
	list := func(f func(target string) (any, error)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r.URL.Query().Get("target"))
			if err != nil {
				in.writeError(w, err)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			if err := json.NewEncoder(w).Encode(v); err != nil {
				in.log.Debug("write reply", "err", err)
			}
		}
	}
	mux.HandleFunc("GET /v1/ports", list(func(string) (any, error) { return in.Ports(), nil }))
	mux.HandleFunc("GET /v1/vis", list(func(t string) (any, error) { return in.VIs(t) }))
	mux.HandleFunc("GET /v1/filters", list(func(t string) (any, error) { return in.Filters(t) }))
	mux.HandleFunc("GET /v1/stats", list(func(t string) (any, error) { return in.Stats(t) }))
	mux.HandleFunc("GET /v1/capture", in.serveCapture)
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewVITrafficCollector(in.VISamples), metrics.NewAllocationCollector(in.AllocationSamples))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		in.writeError(w, notFound("no endpoint %s %s; try /v1/ports, /v1/vis, /v1/filters, /v1/stats, /v1/capture or /metrics", r.Method, r.URL.Path))
	})
	return mux
}

func (in *Inspector) serveCapture(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var opts api.CaptureOptions
	snap, err := parseUint("snaplen", q.Get("snaplen"), dataplane.MaxSnapLen)
	if err != nil {
		in.writeError(w, err)
		return
	}
	opts.SnapLen = uint32(snap)
	if opts.Count, err = parseUint("count", q.Get("count"), 1<<40); err != nil {
		in.writeError(w, err)
		return
	}
	if s := q.Get("timeout"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			in.writeError(w, &api.Error{Status: http.StatusBadRequest, Msg: fmt.Sprintf("timeout=%q: want a duration such as 10s", s)})
			return
		}
		opts.Timeout = d
	}
	wroteHeader := false
	sum, err := in.Capture(r.Context(), q.Get("target"), opts, w, func() {
		w.Header().Set("Content-Type", "application/vnd.tcpdump.pcap")
		w.Header().Set("Trailer", api.TrailerRx+", "+api.TrailerTx+", "+api.TrailerDropped)
		w.WriteHeader(http.StatusOK)
		wroteHeader = true
	})
	if err != nil && !wroteHeader {
		in.writeError(w, err)
		return
	}
	if err != nil {
		in.log.Debug("capture ended", "err", err)
	}
	w.Header().Set(api.TrailerRx, strconv.FormatUint(sum.Rx, 10))
	w.Header().Set(api.TrailerTx, strconv.FormatUint(sum.Tx, 10))
	w.Header().Set(api.TrailerDropped, strconv.FormatUint(sum.Dropped, 10))
}

func (in *Inspector) writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var e *api.Error
	if errors.As(err, &e) {
		status = e.Status
	}
	if status >= 500 {
		in.log.Error("diagnostics query failed", "err", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(api.ErrorReply{Error: err.Error()})
}

// Server serves an Inspector on a unix socket.
type Server struct {
	path string
	lis  net.Listener
	srv  *http.Server
	log  *slog.Logger
}

// Listen creates the socket (mode 0600: root only; its directory is made
// 0755 if missing). A stale socket left by a dead agent is replaced; a live
// one is an error.
func Listen(path string, in *Inspector) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("diagnostics socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("diagnostics socket %s: a non-socket file is in the way; remove it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("diagnostics socket %s: another agent is serving it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale diagnostics socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path) // SOCK_CLOEXEC
	if err != nil {
		return nil, fmt.Errorf("diagnostics socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("diagnostics socket %s: %w", path, err)
	}
	return &Server{path: path, lis: lis, log: in.log,
		srv: &http.Server{Handler: in.Handler(), ReadHeaderTimeout: 5 * time.Second}}, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Serve serves until ctx is done or Close.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = s.Close() })
	defer stop()
	err := s.srv.Serve(s.lis)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops serving (running captures end) and removes the socket.
func (s *Server) Close() error {
	err := s.srv.Close()
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}
