package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-efvi/kube-efvi/pkg/agent"
	"github.com/kube-efvi/kube-efvi/pkg/attach"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/podwatch"
	"github.com/kube-efvi/kube-efvi/pkg/softvi"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
)

// cniOptions say how the agent reaches the API server and where the CNI
// plugin reaches the agent.
type cniOptions struct {
	socket     string // agent API socket for efvi-cni, or "off"
	kubeconfig string // "" = in-cluster
	node       string // this node's name
}

func (o cniOptions) restConfig() (*rest.Config, error) {
	if o.kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	}
	return rest.InClusterConfig()
}

// serveCNI runs the CNI-facing side of the agent until ctx ends: the agent
// API efvi-cni calls (ADD/DEL/CHECK/GC/STATUS), which installs the filters
// pods declare for their own IPs, and the watch of this node's pods that
// removes the filters of pods that are gone even when a DEL was missed.
// settings are the agent's resolved settings (paths).
func serveCNI(ctx context.Context, log *slog.Logger, o cniOptions, settings config.Agent, ag *agent.Agent, sw *softvi.Backend, pods *podNames) error {
	if o.socket == "off" {
		log.Info("CNI agent API disabled (--cni-socket off)")
		return nil
	}
	rc, err := o.restConfig()
	if err != nil {
		return fmt.Errorf("CNI side needs the API server (pods, events): %w; run in a pod with a service account or pass --kubeconfig", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("API client: %w", err)
	}
	devs, err := attach.DialKubelet(settings.PodResourcesSocket)
	if err != nil {
		return fmt.Errorf("PodResources: %w", err)
	}
	defer devs.Close()
	events, stopEvents := attach.NewEventRecorder(client, o.node)
	defer stopEvents()
	// A process refused on a broker socket is reported on the pod that owns
	// the allocation.
	sw.OnRefused(func(r softvi.Refusal) {
		if ns, name, ok := pods.name(r.AllocationID); ok {
			events.Event(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID(r.PodUID)}},
				corev1.EventTypeWarning, "BrokerPeerRefused",
				fmt.Sprintf("process pid %d uid %d was refused the VI socket of allocation %s: %v", r.Peer.PID, r.Peer.UID, r.AllocationID, r.Err))
		}
	})
	defer sw.OnRefused(nil)
	svc, err := attach.New(attach.Config{
		Registry: sw.Registry(),
		Devices:  devs,
		Pods:     attach.ClientPodGetter{Client: client},
		Events:   events,
		Allowance: func(pool, ns string) config.Allowance {
			p, ok := ag.Pool(pool)
			if !ok {
				return config.Allowance{}
			}
			return p.FilterPolicy.For(ns)
		},
		// The plugin is chained on every pod: the agent is ready as soon as
		// it runs, even on a node where no pool selects a port.
		Ready:     func() error { return nil },
		StatePath: filepath.Join(settings.StateDir, "cni-attachments.json"),
		Logger:    log.With("component", "cni"),
	})
	if err != nil {
		return err
	}
	pods.svc.Store(svc)
	if err := os.MkdirAll(filepath.Dir(o.socket), 0o755); err != nil {
		return err
	}
	lis, err := cniapi.Listen(o.socket)
	if err != nil {
		return err
	}
	errs := make(chan error, 2)
	go func() { errs <- cniapi.NewServer(svc, log.With("component", "cniapi")).Serve(ctx, lis) }()
	go func() { errs <- podwatch.Run(ctx, rc, svc, podwatch.Options{Node: o.node}) }()
	log.Info("CNI agent API serving", "socket", o.socket, "node", o.node)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil && ctx.Err() == nil {
			return err
		}
	}
	return nil
}

// podNames tells diagnostics and metrics which pod holds an allocation, from
// the CNI side's attachment records (unknown until the CNI side runs).
type podNames struct {
	reg *viservice.Registry
	svc atomic.Pointer[attach.Service]
}

func (p *podNames) name(allocationID string) (namespace, name string, ok bool) {
	svc := p.svc.Load()
	if svc == nil {
		return "", "", false
	}
	for _, r := range svc.Records() {
		for _, d := range r.Devices {
			if id, _, held := p.reg.ByDevice(d); held && id == allocationID {
				return r.PodNamespace, r.PodName, r.PodName != ""
			}
		}
	}
	return "", "", false
}
