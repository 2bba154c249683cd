// Command efvi-cni is kube-efvi's chained CNI plugin (spec 0.3.0 to 1.1.0:
// ADD, DEL, CHECK, GC, STATUS, VERSION). It passes prevResult through
// unchanged and forwards each attachment of a pod that holds VIs (container
// id, netns, ifname, the pod identity from CNI_ARGS, the IPs from prevResult
// and the netconf's defaultFilters) to the node agent over HTTP+JSON on a unix
// socket (pkg/cniapi). The agent (pkg/attach) decides and installs
// everything; the plugin only maps the agent's answer to a CNI result or
// error.
//
// # Blast radius: pods without a VI never depend on the agent
//
// The plugin is chained into the node's default network, so it runs for
// every pod; the agent is optional for all pods but those holding a VI. The
// plugin learns whether a pod holds a VI, without the agent, from the
// kubelet device manager's checkpoint (pkg/kubeletcheckpoint; netconf
// kubeletCheckpoint, default
// /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint): the kubelet
// allocates a pod's devices when it admits the pod and writes the
// checkpoint (atomically) before it creates the sandbox, so at ADD the file
// lists every device the pod holds, by pod UID (K8S_POD_UID). It is the
// kubelet's own record, it exists whatever the agent's state, and the
// plugin reads it with no call to anyone. A file the agent kept instead would
// be as stale as the agent.
//
//   - A pod holds no VI when CNI_ARGS has no pod (not a Kubernetes pod), or
//     when the checkpoint parses and lists no device of a resource in the
//     netconf's resourceDomain (default efvi.io, i.e. efvi.io/<pool>) for
//     the pod's UID. ADD then prints prevResult exactly as received and
//     CHECK succeeds, without the agent and whatever the netconf's values.
//   - A pod holds VIs when the checkpoint says so. A checkpoint that is
//     missing or does not parse, or a pod without a UID, leaves it unknown:
//     the plugin asks the agent as for a VI pod (and says why on stderr).
//   - For a VI pod (or an unknown one) the netconf is checked strictly:
//     an unknown field or a bad value fails ADD and CHECK with code 7 naming
//     the field. If the agent cannot be reached, ADD fails with code 11 (try
//     again later) naming the agent's socket; the runtime retries the
//     sandbox, so the pod starts by itself once the agent is back.
//   - DEL reads the netconf leniently (a bad value falls back to its
//     default, an unknown field is ignored; even a stdin that is not JSON or
//     has an unsupported cniVersion is handled, outside the CNI library's
//     dispatcher) and never fails for the netconf or an unreachable agent:
//     the agent's GC and pod reconcile remove the attachment's filters when
//     it is back (its record survives restarts). DEL fails only when the
//     agent answers that it could not remove this attachment's filters.
//   - STATUS never fails: an agent that is down or not ready is said on
//     stderr (the runtime's log). Failing it would make a CNI 1.1 runtime
//     report NetworkReady=false and the node NotReady for every pod.
//   - GC with the agent unreachable succeeds (the agent reconciles later).
//
// Netconf (fields other than the CNI spec's; all optional):
//
//	{"type":"efvi-cni","agentSocket":"/run/efvi/agent.sock","defaultFilters":"udp:5000","timeout":"5s",
//	 "kubeletCheckpoint":"/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint","resourceDomain":"efvi.io"}
//
// timeout is a Go duration from 1ms to 5m. Errors carry the agent's CNI
// code: 100 filter refused by policy (EPERM), 101 conflict (EEXIST/EBUSY),
// 102 invalid declaration (EINVAL), 103 filter not installed (CHECK), 104
// pod identity mismatch, 11 try again later (agent, kubelet or API server
// unavailable), 7 bad netconf (VI pods only).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/kubeletcheckpoint"
)

const usage = `efvi-cni: the kube-efvi chained CNI plugin (CNI 0.3.0 to 1.1.0).

It is run by the container runtime with CNI_COMMAND set, never by hand. Chain it
after the pod network's main plugin:

  {"type":"efvi-cni","agentSocket":"/run/efvi/agent.sock","defaultFilters":"udp:5000","timeout":"5s"}

ADD asks the efvi agent to steer the declared flows of a pod that holds VIs
(annotation efvi.io/filters plus defaultFilters, for the pod's own IPs) to
its VIs; a pod without VIs (per the kubelet's device checkpoint) is passed
through without the agent. DEL removes exactly those filters; CHECK verifies
them; GC drops attachments the runtime no longer knows; STATUS logs whether
the agent is ready and never fails.
`

func main() {
	for _, a := range os.Args[1:] {
		if a == "--help" || a == "-h" || a == "help" {
			fmt.Print(usage)
			return
		}
	}
	// DEL is dispatched here, not by skel: skel fails on a stdin that is not
	// JSON or names an unsupported cniVersion, and a failing DEL is retried
	// by the runtime forever.
	if os.Getenv("CNI_COMMAND") == "DEL" {
		os.Exit(runDel(os.Stdin, os.Stdout))
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), "efvi-cni: kube-efvi chained CNI plugin")
}

// logf writes a line to stderr, which the runtime logs.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "efvi-cni: "+format+"\n", args...)
}

// runDel runs DEL from the environment and stdin, never failing on either.
func runDel(stdin io.Reader, stdout io.Writer) int {
	data, err := io.ReadAll(io.LimitReader(stdin, maxNetconf+1))
	if err != nil {
		logf("DEL: read stdin: %v (using the defaults)", err)
	}
	args := &skel.CmdArgs{ContainerID: os.Getenv("CNI_CONTAINERID"), Netns: os.Getenv("CNI_NETNS"),
		IfName: os.Getenv("CNI_IFNAME"), Args: os.Getenv("CNI_ARGS"), Path: os.Getenv("CNI_PATH"), StdinData: data}
	if err := cmdDel(args); err != nil {
		var te *types.Error
		if !errors.As(err, &te) {
			te = types.NewError(types.ErrInternal, err.Error(), "")
		}
		_ = json.NewEncoder(stdout).Encode(te)
		return 1
	}
	return 0
}

// viState is what the plugin knows, without the agent, of a pod's VIs.
type viState struct {
	known     bool     // the checkpoint (or CNI_ARGS) answered
	resources []string // the VI resources the pod holds; none with known: no VI
	why       string   // why it is unknown
}

func (v viState) none() bool { return v.known && len(v.resources) == 0 }

// podVIs reads the kubelet's device checkpoint for the pod.
func podVIs(c *NetConf, ns, name, uid string) viState {
	if ns == "" && name == "" && uid == "" {
		return viState{known: true} // not a Kubernetes pod: the agent does nothing for it either
	}
	if uid == "" {
		return viState{why: "CNI_ARGS has no K8S_POD_UID"}
	}
	cp, err := kubeletcheckpoint.Read(c.KubeletCheckpoint)
	if err != nil {
		why := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			why = fmt.Sprintf("the kubelet device checkpoint %s does not exist (set netconf kubeletCheckpoint to the kubelet's <root-dir>/device-plugins/%s)",
				c.KubeletCheckpoint, kubeletcheckpoint.FileName)
		}
		return viState{why: why}
	}
	return viState{known: true, resources: cp.PodResources(uid, c.ResourceDomain)}
}

// forVIPod prefixes a strict-netconf error with the pod it stops.
func forVIPod(e *types.Error, pod string, v viState) *types.Error {
	holds := "may hold VIs (" + v.why + ")"
	if v.known {
		holds = "holds " + strings.Join(v.resources, ", ")
	}
	return types.NewError(e.Code, fmt.Sprintf("pod %s %s: %s", pod, holds, e.Msg), e.Details)
}

// cniError turns an agent error into the CNI error the runtime sees.
func cniError(c *NetConf, err error) error {
	if cniapi.IsUnreachable(err) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("the efvi agent at %s is not reachable; try again later (is the kube-efvi agent pod running on this node?)", c.AgentSocket),
			err.Error())
	}
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

func attachment(args *skel.CmdArgs, c *NetConf, ns, name, uid string) (*cniapi.Attachment, types.Result, error) {
	prev, ips, terr := prevIPs(c)
	if terr != nil {
		return nil, nil, terr
	}
	return &cniapi.Attachment{
		Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PodNamespace: ns, PodName: name, PodUID: uid, IPs: ips, DefaultFilters: c.DefaultFilters,
	}, prev, nil
}

// passThrough prints prevResult exactly as the runtime sent it.
func passThrough(c *NetConf) error {
	out := []byte(c.rawPrev)
	if out == nil {
		v := c.CNIVersion
		if v == "" {
			v = version.Current()
		}
		out, _ = json.Marshal(map[string]string{"cniVersion": v})
	}
	if _, err := os.Stdout.Write(append(out, '\n')); err != nil {
		return types.NewError(types.ErrIOFailure, "write the result", err.Error())
	}
	return nil
}

func cmdAdd(args *skel.CmdArgs) error {
	c, perr := parseNetConf(args.StdinData)
	if perr != nil {
		return perr // no prevResult to pass through
	}
	ns, name, uid, aerr := k8sArgs(args.Args)
	if aerr != nil {
		return aerr
	}
	vis := podVIs(c, ns, name, uid)
	if vis.none() {
		return passThrough(c)
	}
	pod := ns + "/" + name
	if !vis.known {
		logf("ADD %s: %s; asking the agent", pod, vis.why)
	}
	if e := c.strict(); e != nil {
		return forVIPod(e, pod, vis)
	}
	att, prev, err := attachment(args, c, ns, name, uid)
	if err != nil {
		return err
	}
	if prev == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "efvi-cni is a chained plugin and got no prevResult",
			"put efvi-cni after the pod network's main plugin in the conflist's \"plugins\" list")
	}
	if _, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.AddResponse, error) { return cl.Add(ctx, att) }); err != nil {
		return cniError(c, err)
	}
	return types.PrintResult(prev, c.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	// Lenient: a bad netconf leaves the defaults (problems are logged).
	c, perr := parseNetConf(args.StdinData)
	if perr != nil {
		logf("DEL: %s (using the defaults)", perr.Error())
	}
	for _, p := range c.problems {
		logf("DEL: ignoring a netconf problem: %s", p.Msg)
	}
	if args.ContainerID == "" || args.IfName == "" {
		logf("DEL without CNI_CONTAINERID or CNI_IFNAME: no attachment to remove")
		return nil
	}
	// DEL needs neither prevResult nor the netns.
	ns, name, uid, aerr := k8sArgs(args.Args)
	if aerr != nil {
		logf("DEL: %s (the attachment is removed by container id)", aerr.Msg)
	}
	att := &cniapi.Attachment{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns,
		PodNamespace: ns, PodName: name, PodUID: uid}
	_, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.DelResponse, error) { return cl.Del(ctx, att) })
	if cniapi.IsUnreachable(err) {
		logf("DEL %s: agent at %s unreachable (%v); the agent's GC and pod reconcile will remove the filters", att.Key(), c.AgentSocket, err)
		return nil
	}
	if err != nil {
		return cniError(c, err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	c, perr := parseNetConf(args.StdinData)
	if perr != nil {
		return perr
	}
	ns, name, uid, aerr := k8sArgs(args.Args)
	if aerr != nil {
		return aerr
	}
	vis := podVIs(c, ns, name, uid)
	if vis.none() {
		return nil
	}
	pod := ns + "/" + name
	if e := c.strict(); e != nil {
		return forVIPod(e, pod, vis)
	}
	att, prev, err := attachment(args, c, ns, name, uid)
	if err != nil {
		return err
	}
	if prev == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK got no prevResult", "the runtime must pass the cached result to CHECK")
	}
	if _, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.CheckResponse, error) { return cl.Check(ctx, att) }); err != nil {
		return cniError(c, err)
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	c, perr := parseNetConf(args.StdinData)
	if perr != nil || c.Name == "" {
		logf("GC: the netconf names no network; nothing collected")
		return nil
	}
	req := &cniapi.GCRequest{Network: c.Name}
	seen := map[types.GCAttachment]bool{}
	for _, a := range append(c.ValidAttachments, c.GCAttachments...) {
		if !seen[a] {
			seen[a] = true
			req.Valid = append(req.Valid, cniapi.AttachmentRef{ContainerID: a.ContainerID, IfName: a.IfName})
		}
	}
	_, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.GCResponse, error) { return cl.GC(ctx, req) })
	if cniapi.IsUnreachable(err) {
		logf("GC of %s: agent at %s unreachable (%v); the agent collects when it is back", c.Name, c.AgentSocket, err)
		return nil
	}
	if err != nil {
		return cniError(c, err)
	}
	return nil
}

// cmdStatus never fails: see the package doc.
func cmdStatus(args *skel.CmdArgs) error {
	c, perr := parseNetConf(args.StdinData)
	if perr != nil {
		logf("STATUS: %s", perr.Error())
	}
	for _, p := range c.problems {
		logf("STATUS: netconf problem (VI pods will fail ADD): %s", p.Msg)
	}
	st, err := call(c, func(ctx context.Context, cl *cniapi.Client) (*cniapi.StatusResponse, error) {
		return cl.Status(ctx, &cniapi.StatusRequest{})
	})
	switch {
	case err != nil:
		logf("STATUS: the efvi agent at %s did not answer (%v): pods without VIs are unaffected, VI pods wait for it", c.AgentSocket, err)
	case !st.Ready:
		logf("STATUS: the efvi agent is not ready (%s): pods without VIs are unaffected", st.Reason)
	}
	return nil
}
