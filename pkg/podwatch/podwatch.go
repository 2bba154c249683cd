// Package podwatch keeps the CNI attachments (pkg/attach) in step with the
// pods of this node, so a DEL that never came cannot leak a filter. It
// watches the node's pods with controller-runtime (a cache restricted by the
// field selector spec.nodeName=<node>):
//
//   - on every event for a pod that has attachments, if the cached pod is
//     gone, finished (Succeeded/Failed) or has another UID than an
//     attachment's, the target re-checks with the API server and removes
//     those attachments;
//   - once the cache has synced, and then every Interval, a sweep hands the
//     target the pods the cache lists, and the target removes the
//     attachments of pods not among them (again confirmed with the API
//     server; fresh attachments are left alone, see attach.SweepGrace).
package podwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-logr/logr"
	"github.com/kube-efvi/kube-efvi/pkg/attach"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// DefaultInterval is the sweep period.
const DefaultInterval = 5 * time.Minute

// Target is what the watch keeps in step; *attach.Service implements it.
type Target interface {
	PodUIDs(namespace, name string) []string
	ReconcilePod(ctx context.Context, namespace, name string) ([]string, error)
	Sweep(ctx context.Context, live []attach.PodRef) ([]string, error)
}

var _ Target = (*attach.Service)(nil)

// Reconciler is the watch's logic, separate from the manager so it can be
// tested with a fake client.
type Reconciler struct {
	Reader client.Reader // the node's pods (the manager's cache)
	Target Target
	Log    *slog.Logger
}

func terminal(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	uids := r.Target.PodUIDs(req.Namespace, req.Name)
	if len(uids) == 0 {
		return reconcile.Result{}, nil
	}
	var pod corev1.Pod
	err := r.Reader.Get(ctx, req.NamespacedName, &pod)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return reconcile.Result{}, fmt.Errorf("get pod %s: %w", req.NamespacedName, err)
	case terminal(&pod):
	default:
		stale := false
		for _, u := range uids {
			if u != "" && u != string(pod.UID) {
				stale = true
			}
		}
		if !stale {
			return reconcile.Result{}, nil
		}
	}
	removed, err := r.Target.ReconcilePod(ctx, req.Namespace, req.Name)
	if len(removed) > 0 {
		r.log().Info("removed attachments of a gone pod", "pod", req.NamespacedName.String(), "keys", removed)
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("reconcile attachments of pod %s: %w", req.NamespacedName, err)
	}
	return reconcile.Result{}, nil
}

// Sweep compares every attachment with the pods the reader lists.
func (r *Reconciler) Sweep(ctx context.Context) error {
	var pods corev1.PodList
	if err := r.Reader.List(ctx, &pods); err != nil {
		return fmt.Errorf("list the node's pods: %w", err)
	}
	live := make([]attach.PodRef, 0, len(pods.Items))
	for i := range pods.Items {
		p := &pods.Items[i]
		if !terminal(p) {
			live = append(live, attach.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)})
		}
	}
	removed, err := r.Target.Sweep(ctx, live)
	if len(removed) > 0 {
		r.log().Info("sweep removed attachments of gone pods", "keys", removed)
	}
	return err
}

func (r *Reconciler) log() *slog.Logger {
	if r.Log == nil {
		return slog.Default()
	}
	return r.Log
}

// Options configure Run.
type Options struct {
	Node     string        // required: this node's name
	Interval time.Duration // sweep period (default DefaultInterval)
	Logger   *slog.Logger
}

// Run watches the node's pods until ctx ends. It starts a controller-runtime
// manager with no metrics or health servers and no leader election (one
// agent per node).
func Run(ctx context.Context, cfg *rest.Config, target Target, o Options) error {
	if o.Node == "" {
		return errors.New("podwatch: the node name is required")
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	log := o.Logger.With("component", "podwatch")
	mgr, err := manager.New(cfg, manager.Options{
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("spec.nodeName", o.Node)},
		}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Logger:                 logr.FromSlogHandler(log.Handler()),
		Controller:             ctrlconfig.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return fmt.Errorf("podwatch: manager: %w", err)
	}
	r := &Reconciler{Reader: mgr.GetCache(), Target: target, Log: log}
	if err := ctrl.NewControllerManagedBy(mgr).For(&corev1.Pod{}).Named("efvi-cni-pods").Complete(r); err != nil {
		return fmt.Errorf("podwatch: controller: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			return nil // ctx ended
		}
		t := time.NewTicker(o.Interval)
		defer t.Stop()
		for {
			if err := r.Sweep(ctx); err != nil {
				log.Warn("sweep failed; retrying at the next interval", "err", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})); err != nil {
		return fmt.Errorf("podwatch: sweep: %w", err)
	}
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("podwatch: %w", err)
	}
	return nil
}
