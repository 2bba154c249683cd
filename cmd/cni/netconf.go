package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
)

// Netconf defaults and bounds.
const (
	defaultTimeout = 5 * time.Second
	maxTimeout     = 5 * time.Minute
	maxNetconf     = 1 << 20
)

// NetConf is the plugin's network configuration (stdin).
type NetConf struct {
	types.PluginConf
	// AgentSocket is the agent API socket (default /run/efvi/agent.sock).
	AgentSocket string `json:"agentSocket,omitempty"`
	// DefaultFilters are filters every pod with a VI gets, merged with its
	// efvi.io/filters annotation (efsink grammar).
	DefaultFilters string `json:"defaultFilters,omitempty"`
	// Timeout bounds each call to the agent (Go duration, default 5s).
	Timeout string `json:"timeout,omitempty"`

	// GCAttachments is CNI 1.1's "cni.dev/attachments" (an older name of
	// cni.dev/valid-attachments that libcni also sends).
	GCAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`

	timeout time.Duration
}

// knownFields are the netconf keys the plugin accepts: the CNI spec's and
// its own. Anything else is a typo worth an error.
var knownFields = []string{
	"cniVersion", "name", "type", "capabilities", "ipam", "dns", "args", "runtimeConfig", "prevResult",
	"cni.dev/valid-attachments", "cni.dev/attachments",
	"agentSocket", "defaultFilters", "timeout",
}

func confError(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...),
		`efvi-cni netconf: {"type":"efvi-cni","agentSocket":"/run/efvi/agent.sock","defaultFilters":"udp:5000","timeout":"5s"}`)
}

// parseNetConf decodes and validates stdin strictly; errors name the field.
func parseNetConf(data []byte) (*NetConf, *types.Error) {
	if len(data) > maxNetconf {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("netconf is %d bytes, more than %d", len(data), maxNetconf), "")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "netconf on stdin is not a JSON object", err.Error())
	}
	var unknown []string
	for k := range raw {
		if !slices.Contains(knownFields, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, confError("netconf field %q is unknown to efvi-cni (known: agentSocket, defaultFilters, timeout and the CNI spec's fields)", unknown[0])
	}
	for _, f := range []string{"agentSocket", "defaultFilters", "timeout"} {
		if v, ok := raw[f]; ok && !isJSONString(v) {
			return nil, confError("netconf field %q must be a string, got %s", f, clip(string(v)))
		}
	}
	var c NetConf
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "netconf fields have the wrong types", err.Error())
	}
	if c.CNIVersion == "" {
		return nil, confError("netconf field \"cniVersion\" is missing")
	}
	if c.AgentSocket == "" {
		c.AgentSocket = cniapi.DefaultSocket
	}
	if !filepath.IsAbs(c.AgentSocket) || filepath.Clean(c.AgentSocket) != c.AgentSocket {
		return nil, confError("netconf field \"agentSocket\" must be a clean absolute path, got %q", c.AgentSocket)
	}
	c.timeout = defaultTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 || d > maxTimeout {
			return nil, confError("netconf field \"timeout\" must be a Go duration between 1ms and %v such as \"5s\", got %q", maxTimeout, c.Timeout)
		}
		c.timeout = d
	}
	// The grammar is checked here, with documentation addresses standing in
	// for the pod's, so a typo fails at the first pod with a clear message.
	if _, err := cniapi.ParseDeclaration("netconf field \"defaultFilters\"", c.DefaultFilters,
		[]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}); err != nil {
		return nil, confError("%v", err)
	}
	return &c, nil
}

func isJSONString(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	return len(v) > 0 && v[0] == '"'
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// prevIPs returns the pod's addresses from prevResult (nil if absent).
func prevIPs(c *NetConf) (types.Result, []netip.Addr, *types.Error) {
	if c.RawPrevResult == nil {
		return nil, nil, nil
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "netconf field \"prevResult\" is not a valid CNI result", err.Error())
	}
	res, err := types100.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, "netconf field \"prevResult\" cannot be read as a CNI 1.0 result", err.Error())
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult IP %v is not an address", ipc.Address.IP), "")
		}
		a = a.Unmap()
		if !slices.Contains(ips, a) {
			ips = append(ips, a)
		}
	}
	return c.PrevResult, ips, nil
}

// k8sArgs picks the pod identity out of CNI_ARGS ("K=V;K=V"); other keys
// are ignored, as runtimes pass many.
func k8sArgs(args string) (ns, name, uid string, err *types.Error) {
	if args == "" {
		return "", "", "", nil
	}
	for _, kv := range strings.Split(args, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", "", "", types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS item %q is not KEY=VALUE", clip(kv)), "CNI_ARGS: "+clip(args))
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			ns = v
		case "K8S_POD_NAME":
			name = v
		case "K8S_POD_UID":
			uid = v
		}
	}
	return ns, name, uid, nil
}
