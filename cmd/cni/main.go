// Command efvi-cni is kube-efvi's chained CNI plugin (spec 1.0.0 and 1.1.0:
// ADD, DEL, CHECK, GC, STATUS, VERSION). It passes prevResult through
// unchanged and forwards each attachment (container id, netns, ifname, the
// pod identity from CNI_ARGS, the IPs from prevResult and the netconf's
// defaultFilters) to the node agent over gRPC on a unix socket
// (pkg/cniapi). The agent (pkg/attach) decides and installs everything; the
// plugin only maps the agent's answer to a CNI result or error.
//
// Netconf (validated strictly; unknown fields are errors):
//
//	{"type":"efvi-cni","agentSocket":"/run/efvi/agent.sock","defaultFilters":"udp:5000","timeout":"5s"}
//
// Errors carry the agent's CNI code: 100 filter refused by policy (EPERM),
// 101 conflict (EEXIST/EBUSY), 102 invalid declaration (EINVAL), 103 filter
// not installed (CHECK), 104 pod identity mismatch, 11 try again later
// (agent, kubelet or API server unavailable), 50 agent not ready (STATUS).
//
// DEL never blocks pod deletion on a missing agent: if the agent cannot be
// reached, DEL succeeds and says so on stderr; the agent's GC and pod
// reconcile remove the attachment's filters when it is back (its record
// survives restarts).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
)

const usage = `efvi-cni: the kube-efvi chained CNI plugin (CNI 1.0.0, 1.1.0).

It is run by the container runtime with CNI_COMMAND set, never by hand. Chain it
after the pod network's main plugin:

  {"type":"efvi-cni","agentSocket":"/run/efvi/agent.sock","defaultFilters":"udp:5000","timeout":"5s"}

ADD asks the efvi agent to steer the pod's declared flows (annotation
efvi.io/filters plus defaultFilters, for the pod's own IPs) to the pod's VIs;
DEL removes exactly those filters; CHECK verifies them; GC drops attachments
the runtime no longer knows; STATUS reports whether the agent is ready.
`

func main() {
	for _, a := range os.Args[1:] {
		if a == "--help" || a == "-h" || a == "help" {
			fmt.Print(usage)
			return
		}
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.PluginSupports("1.0.0", "1.1.0"), "efvi-cni: kube-efvi chained CNI plugin")
}

// cniError turns an agent error into the CNI error the runtime sees.
func cniError(err error) error {
	var ce *cniapi.Error
	if errors.As(err, &ce) {
		return types.NewError(ce.Code, ce.Msg, ce.Details)
	}
	return types.NewError(types.ErrInternal, "efvi-cni", err.Error())
}

// call runs f against the agent at the netconf's socket within its timeout.
func call[T any](c *NetConf, f func(context.Context, *cniapi.Client) (T, error)) (T, error) {
	var zero T
	cl, err := cniapi.Dial(c.AgentSocket)
	if err != nil {
		return zero, types.NewError(types.ErrInternal, "efvi-cni: agent client", err.Error())
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	return f(ctx, cl)
}

func attachment(args *skel.CmdArgs, c *NetConf) (*cniapi.Attachment, types.Result, error) {
	ns, name, uid, terr := k8sArgs(args.Args)
	if terr != nil {
		return nil, nil, terr
	}
	prev, ips, terr := prevIPs(c)
	if terr != nil {
		return nil, nil, terr
	}
	return &cniapi.Attachment{
		Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PodNamespace: ns, PodName: name, PodUID: uid, IPs: ips, DefaultFilters: c.DefaultFilters,
	}, prev, nil
}

func load(args *skel.CmdArgs) (*NetConf, error) {
	c, terr := parseNetConf(args.StdinData)
	if terr != nil {
		return nil, terr
	}
	return c, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	c, err := load(args)
	if err != nil {
		return err
	}
	att, prev, err := attachment(args, c)
	if err != nil {
		return err
	}
	if prev == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "efvi-cni is a chained plugin and got no prevResult",
			"put efvi-cni after the pod network's main plugin in the conflist's \"plugins\" list")
	}
	if _, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.AddResponse, error) { return cl.Add(ctx, att) }); err != nil {
		return cniError(err)
	}
	return types.PrintResult(prev, c.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	c, err := load(args)
	if err != nil {
		return err
	}
	// DEL needs neither prevResult nor the netns; a bad prevResult is ignored.
	ns, name, uid, _ := k8sArgs(args.Args)
	att := &cniapi.Attachment{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PodNamespace: ns, PodName: name, PodUID: uid}
	_, err = call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.DelResponse, error) { return cl.Del(ctx, att) })
	if cniapi.IsUnreachable(err) {
		fmt.Fprintf(os.Stderr, "efvi-cni: DEL %s: agent unreachable (%v); the agent's GC and pod reconcile will remove the filters\n", att.Key(), err)
		return nil
	}
	if err != nil {
		return cniError(err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	c, err := load(args)
	if err != nil {
		return err
	}
	att, prev, err := attachment(args, c)
	if err != nil {
		return err
	}
	if prev == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK got no prevResult", "the runtime must pass the cached result to CHECK")
	}
	if _, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.CheckResponse, error) { return cl.Check(ctx, att) }); err != nil {
		return cniError(err)
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	c, err := load(args)
	if err != nil {
		return err
	}
	req := &cniapi.GCRequest{Network: c.Name}
	seen := map[types.GCAttachment]bool{}
	for _, a := range append(c.ValidAttachments, c.GCAttachments...) {
		if !seen[a] {
			seen[a] = true
			req.Valid = append(req.Valid, cniapi.AttachmentRef{ContainerID: a.ContainerID, IfName: a.IfName})
		}
	}
	if _, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.GCResponse, error) { return cl.GC(ctx, req) }); err != nil {
		return cniError(err)
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	c, err := load(args)
	if err != nil {
		return err
	}
	st, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.StatusResponse, error) {
		return cl.Status(ctx, &cniapi.StatusRequest{})
	})
	if err != nil {
		var ce *cniapi.Error
		if errors.As(err, &ce) && ce.Code == cniapi.CodeTryAgainLater {
			return types.NewError(types.ErrPluginNotAvailable, "the efvi agent is not reachable at "+c.AgentSocket, ce.Error())
		}
		return cniError(err)
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "the efvi agent is not ready", st.Reason)
	}
	return nil
}
