package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/release"
	"github.com/kube-efvi/kube-efvi/pkg/softvi"
)

// watchRelease starts the watch of the agent's DaemonSet ref
// ("NAMESPACE/NAME") that tells an uninstall from a restart at exit; nil
// (always detach) when ref is empty or no API client can be made.
func watchRelease(ctx context.Context, log *slog.Logger, o cniOptions, ref, stateDir string) *release.Watcher {
	if ref == "" {
		return nil
	}
	rc, err := o.restConfig()
	if err != nil {
		log.Error("--cleanup-unless-daemonset: no API server; the node will not be cleaned at uninstall", "err", err)
		return nil
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		log.Error("--cleanup-unless-daemonset: API client; the node will not be cleaned at uninstall", "err", err)
		return nil
	}
	w, err := release.New(release.Config{Client: client, DaemonSet: ref, Marker: filepath.Join(stateDir, release.MarkerName), Logger: log})
	if err != nil {
		log.Error("--cleanup-unless-daemonset: the node will not be cleaned at uninstall", "err", err)
		return nil
	}
	go w.Run(ctx)
	return w
}

// detachOrDestroy runs at the agent's exit: by default it detaches, leaving
// the data plane and the state for the next agent (VIs keep flowing); when
// the release is gone it removes everything it made on the node.
func detachOrDestroy(log *slog.Logger, rel *release.Watcher, settings *config.Agent, sw *softvi.Backend) {
	if rel != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		gone, why := rel.Gone(ctx)
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
