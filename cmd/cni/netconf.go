package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/kubeletcheckpoint"
)

// Netconf defaults and bounds.
const (
	defaultTimeout = 5 * time.Second
	minTimeout     = time.Millisecond
	maxTimeout     = 5 * time.Minute
	maxNetconf     = 1 << 20
	defaultDomain  = "efvi.io"
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
	// KubeletCheckpoint is the kubelet device manager's checkpoint (default
	// /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint): how the
	// plugin knows, without the agent, that a pod holds no VI.
	KubeletCheckpoint string `json:"kubeletCheckpoint,omitempty"`
	// ResourceDomain is the domain of the VI resources (default efvi.io:
	// efvi.io/<pool>), the agent's pools' resourcePrefix.
	ResourceDomain string `json:"resourceDomain,omitempty"`

	// GCAttachments is CNI 1.1's "cni.dev/attachments" (an older name of
	// cni.dev/valid-attachments that libcni also sends).
	GCAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`

	timeout time.Duration
	// problems are what the lenient parse replaced by defaults or ignored,
	// in field order; ADD and CHECK of a pod that holds VIs fail on the first.
	problems []*types.Error
	// rawPrev is prevResult as the runtime sent it (nil if absent).
	rawPrev json.RawMessage
}

// knownFields are the netconf keys the plugin accepts: the CNI spec's and
// its own. Anything else is a typo worth an error (for VI pods).
var knownFields = []string{
	"cniVersion", "name", "type", "capabilities", "ipam", "dns", "args", "runtimeConfig", "prevResult",
	"cni.dev/valid-attachments", "cni.dev/attachments",
	"agentSocket", "defaultFilters", "timeout", "kubeletCheckpoint", "resourceDomain",
}

const netconfExample = `efvi-cni netconf: {"type":"efvi-cni","agentSocket":"/run/efvi/agent.sock","defaultFilters":"udp:5000","timeout":"5s"}`

func confError(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), netconfExample)
}

// strict returns the first problem of the netconf, or nil.
func (c *NetConf) strict() *types.Error {
	if len(c.problems) > 0 {
		return c.problems[0]
	}
	return nil
}

// parseNetConf decodes stdin leniently: every field it cannot use is
// replaced by its default (or ignored) and recorded as a problem naming the
// field, so DEL, STATUS, GC and a pod without VIs never fail on netconf
// values while ADD and CHECK of a VI pod report them (strict). It returns an
// error only when stdin is not a JSON object at all; the NetConf then holds
// the defaults.
func parseNetConf(data []byte) (*NetConf, *types.Error) {
	c := &NetConf{AgentSocket: cniapi.DefaultSocket, KubeletCheckpoint: kubeletcheckpoint.DefaultPath,
		ResourceDomain: defaultDomain, timeout: defaultTimeout}
	if len(data) > maxNetconf {
		return c, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("netconf is %d bytes, more than %d", len(data), maxNetconf), "")
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil || raw == nil {
		detail := "null"
		if err != nil {
			detail = err.Error()
		}
		return c, types.NewError(types.ErrDecodingFailure, "netconf on stdin is not a JSON object", detail)
	}
	problem := func(e *types.Error) { c.problems = append(c.problems, e) }
	// The CNI spec's fields, one by one, so a bad one spoils only itself.
	str := func(field string, dst *string) bool {
		v, ok := raw[field]
		if !ok {
			return false
		}
		if err := json.Unmarshal(v, dst); err != nil || !isJSONString(v) {
			*dst = ""
			problem(confError("netconf field %q must be a string, got %s", field, clip(string(v))))
			return false
		}
		return true
	}
	str("cniVersion", &c.CNIVersion)
	str("name", &c.Name)
	str("type", &c.Type)
	if c.CNIVersion == "" {
		problem(confError("netconf field \"cniVersion\" is missing"))
	}
	if v, ok := raw["prevResult"]; ok && !bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		c.rawPrev = v
		var m map[string]any
		if err := json.Unmarshal(v, &m); err != nil {
			problem(types.NewError(types.ErrDecodingFailure, "netconf field \"prevResult\" is not a JSON object", err.Error()))
		} else {
			c.RawPrevResult = m
		}
	}
	for _, f := range []struct {
		name string
		dst  any
	}{
		{"capabilities", &c.Capabilities}, {"ipam", &c.IPAM}, {"dns", &c.DNS},
		{"cni.dev/valid-attachments", &c.ValidAttachments}, {"cni.dev/attachments", &c.GCAttachments},
	} {
		if v, ok := raw[f.name]; ok {
			if err := json.Unmarshal(v, f.dst); err != nil {
				problem(confError("netconf field %q has the wrong type: %v", f.name, err))
			}
		}
	}
	var unknown []string
	for k := range raw {
		if !slices.Contains(knownFields, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		problem(confError("netconf field %q is unknown to efvi-cni (known: agentSocket, defaultFilters, timeout, kubeletCheckpoint, resourceDomain and the CNI spec's fields)", unknown[0]))
	}

	// The plugin's own fields: a bad value falls back to the default.
	var s string
	if str("agentSocket", &s) && s != "" {
		if !filepath.IsAbs(s) || filepath.Clean(s) != s {
			problem(confError("netconf field \"agentSocket\" must be a clean absolute path, got %q", s))
		} else {
			c.AgentSocket = s
		}
	}
	s = ""
	if str("kubeletCheckpoint", &s) && s != "" {
		if !filepath.IsAbs(s) || filepath.Clean(s) != s {
			problem(confError("netconf field \"kubeletCheckpoint\" must be a clean absolute path, got %q", s))
		} else {
			c.KubeletCheckpoint = s
		}
	}
	s = ""
	if str("resourceDomain", &s) && s != "" {
		c.ResourceDomain = s
	}
	if str("timeout", &c.Timeout) && c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d < minTimeout || d > maxTimeout {
			problem(confError("netconf field \"timeout\" must be a Go duration between %v and %v such as \"5s\", got %q", minTimeout, maxTimeout, c.Timeout))
		} else {
			c.timeout = d
		}
	}
	// The grammar is checked here, with documentation addresses standing in
	// for the pod's, so a typo fails at the first VI pod with a clear message.
	if str("defaultFilters", &c.DefaultFilters) {
		if _, err := cniapi.ParseDeclaration("netconf field \"defaultFilters\"", c.DefaultFilters,
			[]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}); err != nil {
			problem(confError("%v", err))
			c.DefaultFilters = ""
		}
	}
	return c, nil
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

// podArgs is the part of CNI_ARGS the plugin reads; other keys are ignored
// (runtimes pass many).
type podArgs struct {
	types.CommonArgs
	// The keys, spelled as runtimes send them.
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

// k8sArgs picks the pod identity out of CNI_ARGS ("K=V;K=V") with the CNI
// library's parser.
func k8sArgs(args string) (ns, name, uid string, err *types.Error) {
	a := podArgs{CommonArgs: types.CommonArgs{IgnoreUnknown: true}}
	if lerr := types.LoadArgs(args, &a); lerr != nil {
		return "", "", "", types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS cannot be parsed: "+lerr.Error(), "CNI_ARGS: "+clip(args))
	}
	return string(a.K8S_POD_NAMESPACE), string(a.K8S_POD_NAME), string(a.K8S_POD_UID), nil
}
