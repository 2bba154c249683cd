package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/softvi"
)

// releaseGone reports whether the DaemonSet ref ("NAMESPACE/NAME") that runs
// the agent is gone or being deleted (helm uninstall), and why. When the
// API server cannot say, the release is kept (a restart must never lose
// the pods' VIs).
func releaseGone(ctx context.Context, o cniOptions, ref string) (bool, string) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return false, fmt.Sprintf("--cleanup-unless-daemonset %q: want NAMESPACE/NAME", ref)
	}
	rc, err := o.restConfig()
	if err != nil {
		return false, fmt.Sprintf("no API server (%v)", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return false, fmt.Sprintf("API client: %v", err)
	}
	ds, err := client.AppsV1().DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, fmt.Sprintf("DaemonSet %s is gone", ref)
	case err != nil:
		return false, fmt.Sprintf("cannot ask whether DaemonSet %s exists (%v)", ref, err)
	case ds.DeletionTimestamp != nil:
		return true, fmt.Sprintf("DaemonSet %s is being deleted", ref)
	}
	return false, fmt.Sprintf("DaemonSet %s exists (a restart or an upgrade)", ref)
}

// detachOrDestroy runs at the agent's exit: by default it detaches, leaving
// the data plane and the state for the next agent (VIs keep flowing); when
// the release is gone it removes everything it made on the node.
func detachOrDestroy(log *slog.Logger, o cniOptions, ref string, settings *config.Agent, sw *softvi.Backend) {
	if ref != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		gone, why := releaseGone(ctx, o, ref)
		cancel()
		if gone {
			log.Info("the release is gone: removing the VI veths, XDP/TC programs, pins and state from the node", "reason", why)
			errs := []error{sw.Destroy()}
			if settings != nil {
				errs = append(errs, emptyDir(settings.StateDir), emptyDir(settings.BrokerDir))
			}
			if err := errors.Join(errs...); err != nil {
				log.Error("node cleanup incomplete", "err", err)
			}
			return
		}
		log.Info("keeping the data plane and state for the next agent", "reason", why)
	}
	if err := sw.Close(); err != nil {
		log.Error("detach software backend", "err", err)
	}
}

// emptyDir removes what dir holds (dir itself is usually a hostPath mount).
func emptyDir(dir string) error {
	if dir == "" {
		return nil
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("empty %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
