package cniapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Server serves an Agent on a listener.
type Server struct {
	agent Agent
	log   *slog.Logger
	http  *http.Server
}

// maxRequest bounds a request body (a pod's attachment is a few hundred
// bytes; GC lists every attachment of the node).
const maxRequest = 4 << 20

// NewServer returns a server for agent. logger may be nil (slog.Default).
func NewServer(agent Agent, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{agent: agent, log: logger}
	mux := http.NewServeMux()
	handle(s, mux, methodAdd, Agent.Add)
	handle(s, mux, methodDel, Agent.Del)
	handle(s, mux, methodCheck, Agent.Check)
	handle(s, mux, methodGC, Agent.GC)
	handle(s, mux, methodStatus, Agent.Status)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	return s
}

// Serve serves on lis until ctx is cancelled (then it stops gracefully,
// letting calls in flight finish) or the listener fails. It returns nil
// after a cancel.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	done := make(chan struct{})
	stopped := make(chan struct{})
	defer func() { close(done); <-stopped }()
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = s.http.Shutdown(sctx)
		case <-done:
		}
	}()
	err := s.http.Serve(lis)
	if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent API: serve: %w", err)
	}
	return nil
}

// Stop stops the server at once, failing calls in flight.
func (s *Server) Stop() { _ = s.http.Close() }

// handle serves POST /v1/<name>: the request's JSON in, the response's out.
func handle[Req, Resp any](s *Server, mux *http.ServeMux, name string, call func(Agent, context.Context, *Req) (*Resp, error)) {
	mux.HandleFunc("POST "+pathPrefix+name, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		req := new(Req)
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
		if err := dec.Decode(req); err != nil {
			s.reply(w, name, req, start, nil, &Error{Code: CodeInternal, Msg: "malformed " + name + " request", Details: err.Error()})
			return
		}
		resp, err := call(s.agent, r.Context(), req)
		s.reply(w, name, req, start, resp, err)
	})
}

func (s *Server) reply(w http.ResponseWriter, name string, req any, start time.Time, resp any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		s.log.Warn("CNI request failed", "method", name, "req", req, "err", err, "took", time.Since(start))
		var ce *Error
		if !errors.As(err, &ce) {
			ce = &Error{Code: CodeInternal, Msg: "agent error", Details: err.Error()}
		}
		w.WriteHeader(httpStatus(ce.Code))
		_ = json.NewEncoder(w).Encode(ce)
		return
	}
	s.log.Debug("CNI request", "method", name, "req", req, "took", time.Since(start))
	_ = json.NewEncoder(w).Encode(resp)
}

// httpStatus is the HTTP status a CNI error answers with (for curl and
// logs; the client reads the code from the body).
func httpStatus(code uint) int {
	switch code {
	case CodeTryAgainLater, CodePluginUnavailable:
		return http.StatusServiceUnavailable
	case CodeFilterRefused:
		return http.StatusForbidden
	case CodeFilterConflict:
		return http.StatusConflict
	case CodeBadFilter:
		return http.StatusBadRequest
	case CodeNotInstalled:
		return http.StatusNotFound
	case CodePodMismatch:
		return http.StatusPreconditionFailed
	}
	return http.StatusInternalServerError
}

// Listen creates the agent socket at path: the directory is created (0755),
// a stale socket from an earlier agent is removed, and the socket is made
// 0600 (only root, i.e. the container runtime, may call the agent). The
// listener's fd is close-on-exec (Go's default).
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("agent API socket dir: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("agent API socket %s exists and is not a socket; remove it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale agent API socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agent API: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("agent API: chmod %s: %w", path, err)
	}
	return lis, nil
}

// Paths: POST pathPrefix + method.
const (
	pathPrefix   = "/v1/"
	methodAdd    = "add"
	methodDel    = "del"
	methodCheck  = "check"
	methodGC     = "gc"
	methodStatus = "status"
)
