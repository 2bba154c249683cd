package cniapi

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Client calls the agent over its unix socket. It implements Agent; every
// error it returns is an *Error.
type Client struct {
	conn *grpc.ClientConn
}

// Dial returns a client for the agent socket at path. The connection is made
// on the first call, so a missing agent shows up there as an *Error with
// CodeTryAgainLater (see IsUnreachable).
func Dial(path string) (*Client, error) {
	conn, err := grpc.NewClient("unix:"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(jsonCodec{})))
	if err != nil {
		return nil, fmt.Errorf("agent API client for %s: %w", path, err)
	}
	return &Client{conn: conn}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

func invoke[Req, Resp any](ctx context.Context, c *Client, method string, req *Req) (*Resp, error) {
	resp := new(Resp)
	if err := c.conn.Invoke(ctx, "/"+ServiceName+"/"+method, req, resp); err != nil {
		return nil, fromStatus(err)
	}
	return resp, nil
}

// Add implements Agent.
func (c *Client) Add(ctx context.Context, a *Attachment) (*AddResponse, error) {
	return invoke[Attachment, AddResponse](ctx, c, methodAdd, a)
}

// Del implements Agent.
func (c *Client) Del(ctx context.Context, a *Attachment) (*DelResponse, error) {
	return invoke[Attachment, DelResponse](ctx, c, methodDel, a)
}

// Check implements Agent.
func (c *Client) Check(ctx context.Context, a *Attachment) (*CheckResponse, error) {
	return invoke[Attachment, CheckResponse](ctx, c, methodCheck, a)
}

// GC implements Agent.
func (c *Client) GC(ctx context.Context, r *GCRequest) (*GCResponse, error) {
	return invoke[GCRequest, GCResponse](ctx, c, methodGC, r)
}

// Status implements Agent.
func (c *Client) Status(ctx context.Context, r *StatusRequest) (*StatusResponse, error) {
	return invoke[StatusRequest, StatusResponse](ctx, c, methodStatus, r)
}
