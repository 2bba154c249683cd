// Package release tells the agent's uninstall from a restart or an upgrade.
//
// At exit the agent must choose: detach (a restart or an upgrade: the VIs
// keep flowing and the next agent re-adopts them) or remove everything it
// made on the node (helm uninstall). The sign of an uninstall is that the
// agent's own DaemonSet is deleted. Asking the API server at exit is too
// late: helm deletes the DaemonSet, its RBAC and its ServiceAccount within
// milliseconds of each other, so by the time the pod is told to stop its
// token no longer answers. A [Watcher] therefore watches the DaemonSet for
// the whole life of the agent (a watch, once authorised, keeps delivering
// events after the RBAC that admitted it is gone), remembers the deletion,
// and writes a marker file that the preStop hook (efvi-install uninstall)
// reads to remove the CNI entry without asking the API server either.
package release

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// MarkerName is the marker file's name in the agent's state directory.
const MarkerName = "release-deleted"

// Watcher watches one DaemonSet ("NAMESPACE/NAME").
type Watcher struct {
	client    kubernetes.Interface
	ns, name  string
	marker    string // "" = no marker file
	log       *slog.Logger
	retryBase time.Duration

	mu     sync.Mutex
	gone   bool
	reason string
}

// Config configures a Watcher.
type Config struct {
	Client kubernetes.Interface
	// DaemonSet is "NAMESPACE/NAME" of the agent's DaemonSet.
	DaemonSet string
	// Marker is the file written when the DaemonSet is deleted ("": none).
	// New removes a stale one (the DaemonSet exists while its agent starts).
	Marker string
	Logger *slog.Logger
}

// New checks the reference and removes a stale marker.
func New(c Config) (*Watcher, error) {
	ns, name, ok := strings.Cut(c.DaemonSet, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return nil, fmt.Errorf("DaemonSet reference %q: want NAMESPACE/NAME", c.DaemonSet)
	}
	if c.Client == nil {
		return nil, errors.New("release watcher needs an API client")
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if c.Marker != "" {
		if err := os.Remove(c.Marker); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale release marker: %w", err)
		}
	}
	return &Watcher{client: c.Client, ns: ns, name: name, marker: c.Marker, log: log, retryBase: time.Second}, nil
}

// Run watches until ctx ends or the DaemonSet is deleted. Errors are
// retried with a backoff (the API server may be restarting).
func (w *Watcher) Run(ctx context.Context) {
	delay := w.retryBase
	for ctx.Err() == nil {
		rv, gone, err := w.check(ctx)
		if gone {
			return
		}
		if err == nil {
			if w.watch(ctx, rv) {
				return
			}
			delay = w.retryBase
		} else {
			w.log.Debug("release watch: cannot read the DaemonSet; retrying", "daemonset", w.ns+"/"+w.name, "err", err, "retry", delay)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// check reads the DaemonSet: its resourceVersion, or whether it is gone.
func (w *Watcher) check(ctx context.Context) (rv string, gone bool, err error) {
	ds, err := w.client.AppsV1().DaemonSets(w.ns).Get(ctx, w.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		w.markGone(fmt.Sprintf("DaemonSet %s/%s is gone", w.ns, w.name))
		return "", true, nil
	case err != nil:
		return "", false, err
	case ds.DeletionTimestamp != nil:
		w.markGone(fmt.Sprintf("DaemonSet %s/%s is being deleted", w.ns, w.name))
		return "", true, nil
	}
	return ds.ResourceVersion, false, nil
}

// watch follows the DaemonSet from rv; true when it was deleted.
func (w *Watcher) watch(ctx context.Context, rv string) bool {
	wi, err := w.client.AppsV1().DaemonSets(w.ns).Watch(ctx, metav1.ListOptions{
		FieldSelector:   fields.OneTermEqualSelector("metadata.name", w.name).String(),
		ResourceVersion: rv,
	})
	if err != nil {
		w.log.Debug("release watch: cannot watch the DaemonSet", "daemonset", w.ns+"/"+w.name, "err", err)
		return false
	}
	defer wi.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return false
			}
			switch ev.Type {
			case watch.Deleted:
				w.markGone(fmt.Sprintf("DaemonSet %s/%s was deleted", w.ns, w.name))
				return true
			case watch.Added, watch.Modified:
				if ds, ok := ev.Object.(*appsv1.DaemonSet); ok && ds.DeletionTimestamp != nil {
					w.markGone(fmt.Sprintf("DaemonSet %s/%s is being deleted", w.ns, w.name))
					return true
				}
			case watch.Error:
				return false
			}
		}
	}
}

func (w *Watcher) markGone(reason string) {
	w.mu.Lock()
	already := w.gone
	w.gone, w.reason = true, reason
	w.mu.Unlock()
	if already {
		return
	}
	w.log.Info("the agent's release is being uninstalled: the node will be cleaned at exit", "reason", reason)
	if w.marker == "" {
		return
	}
	err := os.MkdirAll(filepath.Dir(w.marker), 0o755)
	if err == nil {
		err = os.WriteFile(w.marker, []byte(reason+"\n"), 0o644)
	}
	if err != nil {
		w.log.Error("release marker not written: the preStop hook will ask the API server itself", "marker", w.marker, "err", err)
	}
}

// Gone reports whether the release is uninstalled, and why. Without a
// deletion seen by the watch it asks the API server once (bounded by ctx);
// when the API server cannot say, the release is kept: a restart must
// never lose the pods' VIs.
func (w *Watcher) Gone(ctx context.Context) (bool, string) {
	w.mu.Lock()
	gone, reason := w.gone, w.reason
	w.mu.Unlock()
	if gone {
		return true, reason
	}
	_, gone, err := w.check(ctx)
	if gone {
		w.mu.Lock()
		defer w.mu.Unlock()
		return true, w.reason
	}
	if err != nil {
		return false, fmt.Sprintf("cannot ask whether DaemonSet %s/%s exists (%v)", w.ns, w.name, err)
	}
	return false, fmt.Sprintf("DaemonSet %s/%s exists (a restart or an upgrade)", w.ns, w.name)
}
