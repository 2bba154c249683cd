// Package cniapi is the agent API the efvi-cni plugin speaks: HTTP+JSON on a
// root-only host unix socket (default /run/efvi/agent.sock) that carries CNI
// ADD, DEL, CHECK, GC and STATUS from the plugin to the node agent. It is
// the same transport as the agent's diagnostics (pkg/introspect): one kind
// of local API on the node, readable with curl --unix-socket, no code
// generation, and only the standard library in the plugin that runs for
// every pod.
//
// Each call is a POST of the request's JSON to /v1/<method> (add, del,
// check, gc, status); a success answers 200 with the response's JSON. A
// failure answers an HTTP status and the CNI error as JSON ({code, msg,
// details, errno}; see [Error] and the Code constants), so the plugin prints
// exactly what the agent decided, with no string parsing. For example:
//
//	curl --unix-socket /run/efvi/agent.sock -d '{}' http://agent/v1/status
package cniapi

import (
	"context"
	"net/netip"
)

// DefaultSocket is the agent API socket on the host.
const DefaultSocket = "/run/efvi/agent.sock"

// Attachment is one CNI attachment of a pod, as the plugin sees it.
type Attachment struct {
	// Network is the network (conflist) name.
	Network string `json:"network"`
	// ContainerID, IfName and Netns are the CNI_CONTAINERID, CNI_IFNAME and
	// CNI_NETNS of the call. Netns may be empty at DEL.
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
	Netns       string `json:"netns,omitempty"`
	// PodNamespace, PodName and PodUID come from CNI_ARGS
	// (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID); any may be empty
	// when the runtime does not pass them.
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
	// IPs are the pod's addresses from prevResult (no prefix length). Empty
	// at DEL when the runtime lost prevResult.
	IPs []netip.Addr `json:"ips,omitempty"`
	// DefaultFilters are the netconf's defaultFilters (efsink grammar),
	// merged with the pod's annotation by the agent.
	DefaultFilters string `json:"defaultFilters,omitempty"`
}

// Key names the attachment: container id + "/" + ifname, unique on a node.
func (a *Attachment) Key() string { return Key(a.ContainerID, a.IfName) }

// Key builds an attachment key.
func Key(containerID, ifname string) string { return containerID + "/" + ifname }

// AddResponse says what ADD did.
type AddResponse struct {
	// Devices are the VI device ids the pod holds ("<port>-vi<N>"); empty
	// when the pod holds none (ADD then does nothing).
	Devices []string `json:"devices,omitempty"`
	// Filters are the installed filters, canonical efsink text.
	Filters []string `json:"filters,omitempty"`
}

// DelResponse says what DEL did.
type DelResponse struct {
	// Removed is the number of filters removed (0 when nothing was attached).
	Removed int `json:"removed"`
}

// CheckResponse is CHECK's (empty) answer: an error means the check failed.
type CheckResponse struct{}

// AttachmentRef names an attachment in a GC request.
type AttachmentRef struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// GCRequest asks the agent to drop every attachment of Network missing from
// Valid (CNI 1.1 GC).
type GCRequest struct {
	Network string          `json:"network"`
	Valid   []AttachmentRef `json:"valid"`
}

// GCResponse lists the attachment keys GC removed.
type GCResponse struct {
	Removed []string `json:"removed,omitempty"`
}

// StatusRequest asks whether the agent can serve ADD.
type StatusRequest struct{}

// StatusResponse is the agent's readiness.
type StatusResponse struct {
	Ready  bool     `json:"ready"`
	Reason string   `json:"reason,omitempty"` // why not ready
	Ports  []string `json:"ports,omitempty"`  // registered ports
}

// Agent is the service. The server dispatches to an Agent; [Client]
// implements it over the socket. Methods return *Error for failures the
// plugin should report with a specific CNI code; other errors become
// CodeInternal.
type Agent interface {
	Add(ctx context.Context, a *Attachment) (*AddResponse, error)
	Del(ctx context.Context, a *Attachment) (*DelResponse, error)
	Check(ctx context.Context, a *Attachment) (*CheckResponse, error)
	GC(ctx context.Context, r *GCRequest) (*GCResponse, error)
	Status(ctx context.Context, r *StatusRequest) (*StatusResponse, error)
}
