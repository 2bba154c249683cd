package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Client queries an agent's diagnostics socket (efvictl's side).
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client of the socket at path; nothing is dialled
// until the first query.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression: true,
	}
	return &Client{path: path, http: &http.Client{Transport: tr}}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) get(ctx context.Context, path string, q url.Values) (*http.Response, error) {
	u := "http://efvi-agent" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent diagnostics socket %s: %w (is efvi-agent running on this node? run as root, or kubectl exec into the agent pod)", c.path, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e ErrorReply
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, &Error{Status: resp.StatusCode, Msg: e.Error}
		}
		return nil, &Error{Status: resp.StatusCode, Msg: fmt.Sprintf("agent answered %s: %s", resp.Status, strings.TrimSpace(string(b)))}
	}
	return resp, nil
}

func getJSON[T any](ctx context.Context, c *Client, path, target string) (T, error) {
	var v T
	q := url.Values{}
	if target != "" {
		q.Set("target", target)
	}
	resp, err := c.get(ctx, path, q)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return v, fmt.Errorf("decode %s reply: %w", path, err)
	}
	return v, nil
}

// Ports lists the node's ports.
func (c *Client) Ports(ctx context.Context) ([]PortInfo, error) {
	return getJSON[[]PortInfo](ctx, c, "/v1/ports", "")
}

// VIs lists VIs ("" = all).
func (c *Client) VIs(ctx context.Context, target string) ([]VIInfo, error) {
	return getJSON[[]VIInfo](ctx, c, "/v1/vis", target)
}

// Filters lists filters with hit counters.
func (c *Client) Filters(ctx context.Context, target string) ([]FilterInfo, error) {
	return getJSON[[]FilterInfo](ctx, c, "/v1/filters", target)
}

// Stats reads per-VI counters.
func (c *Client) Stats(ctx context.Context, target string) ([]VIStats, error) {
	return getJSON[[]VIStats](ctx, c, "/v1/stats", target)
}

// Metrics returns the Prometheus text of the per-VI counters.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	resp, err := c.get(ctx, "/metrics", nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Capture streams a pcap of target's frames into w. started is called when
// the agent has turned capture on (before the first byte). The summary
// comes from the agent when the capture ended normally.
func (c *Client) Capture(ctx context.Context, target string, opts CaptureOptions, w io.Writer, started func()) (CaptureSummary, error) {
	var sum CaptureSummary
	q := url.Values{"target": {target}}
	if opts.SnapLen > 0 {
		q.Set("snaplen", strconv.FormatUint(uint64(opts.SnapLen), 10))
	}
	if opts.Count > 0 {
		q.Set("count", strconv.FormatUint(opts.Count, 10))
	}
	if opts.Timeout > 0 {
		q.Set("timeout", opts.Timeout.String())
	}
	resp, err := c.get(ctx, "/v1/capture", q)
	if err != nil {
		return sum, err
	}
	defer resp.Body.Close()
	if started != nil {
		started()
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		if ctx.Err() != nil {
			return sum, nil // interrupted: w holds the pcap so far (its last record may be cut short)
		}
		return sum, fmt.Errorf("capture stream: %w", err)
	}
	parse := func(k string) uint64 {
		n, _ := strconv.ParseUint(resp.Trailer.Get(k), 10, 64)
		return n
	}
	sum.Rx, sum.Tx, sum.Dropped = parse(TrailerRx), parse(TrailerTx), parse(TrailerDropped)
	return sum, nil
}
