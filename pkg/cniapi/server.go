package cniapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
)

// Server serves an Agent on a listener.
type Server struct {
	agent Agent
	log   *slog.Logger
	grpc  *grpc.Server
}

// NewServer returns a server for agent. logger may be nil (slog.Default).
func NewServer(agent Agent, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{agent: agent, log: logger}
	s.grpc = grpc.NewServer(grpc.ForceServerCodec(jsonCodec{}), grpc.UnaryInterceptor(s.intercept))
	s.grpc.RegisterService(serviceDesc(), agent)
	return s
}

// Serve serves on lis until ctx is cancelled (then it stops gracefully,
// letting calls in flight finish) or the listener fails. It returns nil
// after a cancel.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			s.grpc.GracefulStop()
		case <-done:
		}
	}()
	err := s.grpc.Serve(lis)
	if ctx.Err() != nil || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent API: serve: %w", err)
	}
	return nil
}

// Stop stops the server at once, failing calls in flight.
func (s *Server) Stop() { s.grpc.Stop() }

func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	if err != nil {
		s.log.Warn("CNI request failed", "method", info.FullMethod, "req", req, "err", err, "took", time.Since(start))
		return nil, toStatus(err)
	}
	s.log.Debug("CNI request", "method", info.FullMethod, "req", req, "took", time.Since(start))
	return resp, nil
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

// Method names.
const (
	methodAdd    = "Add"
	methodDel    = "Del"
	methodCheck  = "Check"
	methodGC     = "GC"
	methodStatus = "Status"
)

func unary[Req, Resp any](call func(Agent, context.Context, *Req) (*Resp, error), name string) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			req := new(Req)
			if err := dec(req); err != nil {
				return nil, err
			}
			a := srv.(Agent)
			if ic == nil {
				return call(a, ctx, req)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + ServiceName + "/" + name}
			return ic(ctx, req, info, func(ctx context.Context, r any) (any, error) {
				return call(a, ctx, r.(*Req))
			})
		},
	}
}

func serviceDesc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*Agent)(nil),
		Methods: []grpc.MethodDesc{
			unary(Agent.Add, methodAdd),
			unary(Agent.Del, methodDel),
			unary(Agent.Check, methodCheck),
			unary(Agent.GC, methodGC),
			unary(Agent.Status, methodStatus),
		},
		Metadata: "efvi/cni/v1 (hand-written, JSON codec)",
	}
}
