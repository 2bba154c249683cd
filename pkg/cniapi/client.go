package cniapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// Client calls the agent over its unix socket. It implements Agent; every
// error it returns is an *Error.
type Client struct {
	path string
	http *http.Client
}

// Dial returns a client for the agent socket at path. The connection is made
// on the first call, so a missing agent shows up there as an *Error with
// CodeTryAgainLater (see IsUnreachable).
func Dial(path string) (*Client, error) {
	if path == "" {
		return nil, errors.New("agent API client: empty socket path")
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression: true,
	}
	return &Client{path: path, http: &http.Client{Transport: tr}}, nil
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// maxReply bounds what the client reads of an answer.
const maxReply = 1 << 20

func invoke[Req, Resp any](ctx context.Context, c *Client, method string, req *Req) (*Resp, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, &Error{Code: CodeInternal, Msg: "agent call failed", Details: fmt.Sprintf("marshal %s request: %v", method, err)}
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://efvi-agent"+pathPrefix+method, bytes.NewReader(body))
	if err != nil {
		return nil, &Error{Code: CodeInternal, Msg: "agent call failed", Details: err.Error()}
	}
	hr.Header.Set("Content-Type", "application/json")
	res, err := c.http.Do(hr)
	if err != nil {
		// No answer: the socket is missing or refuses, or the deadline
		// passed. The runtime retries ADD later.
		return nil, &Error{Code: CodeTryAgainLater, Msg: "the efvi agent is not reachable", Details: fmt.Sprintf("agent API socket %s: %v", c.path, err), unreachable: true}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, maxReply))
	if err != nil {
		return nil, &Error{Code: CodeTryAgainLater, Msg: "the efvi agent is not reachable", Details: fmt.Sprintf("reading the %s answer: %v", method, err), unreachable: true}
	}
	if res.StatusCode != http.StatusOK {
		ce := new(Error)
		if json.Unmarshal(b, ce) != nil || ce.Msg == "" {
			return nil, &Error{Code: CodeInternal, Msg: "agent call failed", Details: fmt.Sprintf("%s: HTTP %s: %.200s", method, res.Status, b)}
		}
		return nil, ce
	}
	resp := new(Resp)
	if err := json.Unmarshal(b, resp); err != nil {
		return nil, &Error{Code: CodeInternal, Msg: "agent call failed", Details: fmt.Sprintf("decode %s answer: %v", method, err)}
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
