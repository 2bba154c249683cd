package attach

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// PodRef is a pod a watch saw on the node.
type PodRef struct {
	Namespace, Name, UID string
}

// SweepGrace protects fresh attachments from a sweep whose pod list was
// taken before their ADD (a watch cache lags the API server).
const SweepGrace = time.Minute

// PodUIDs returns the pod UIDs of the attachments of namespace/name (""
// for an attachment whose UID is unknown): a watch only needs to call
// ReconcilePod when the pod it sees is gone, finished, or has another UID.
func (s *Service) PodUIDs(namespace, name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.records {
		if r.PodNamespace == namespace && r.PodName == name {
			out = append(out, r.PodUID)
		}
	}
	return out
}

// gone asks the API server (not a cache) whether the pod of rec has gone:
// deleted, re-created under the same name (another UID), or finished
// (phase Succeeded/Failed: its sandbox is torn down).
func (s *Service) gone(ctx context.Context, rec Record) (bool, string, error) {
	pod, err := s.cfg.Pods.GetPod(ctx, rec.PodNamespace, rec.PodName)
	switch {
	case apierrors.IsNotFound(err):
		return true, "the pod was deleted", nil
	case err != nil:
		return false, "", fmt.Errorf("get pod %s/%s: %w", rec.PodNamespace, rec.PodName, err)
	case rec.PodUID != "" && string(pod.UID) != rec.PodUID:
		return true, fmt.Sprintf("the pod was re-created (UID %s, the attachment's is %s)", pod.UID, rec.PodUID), nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return true, "the pod has finished (" + string(pod.Status.Phase) + ")", nil
	}
	return false, "", nil
}

// ReconcilePod removes the attachments of namespace/name whose pod has gone
// (a DEL that never came), after confirming with the API server. It returns
// the removed keys.
func (s *Service) ReconcilePod(ctx context.Context, namespace, name string) ([]string, error) {
	var recs []Record
	for _, r := range s.Records() {
		if r.PodNamespace == namespace && r.PodName == name {
			recs = append(recs, r)
		}
	}
	return s.removeGone(ctx, recs)
}

// Sweep compares every attachment with the pods a watch lists on the node
// and removes those whose pod has gone (confirmed with the API server).
// Attachments younger than SweepGrace are left for the next sweep.
func (s *Service) Sweep(ctx context.Context, live []PodRef) ([]string, error) {
	byUID := map[string]bool{}
	byName := map[string]bool{}
	for _, p := range live {
		byUID[p.UID] = true
		byName[p.Namespace+"/"+p.Name] = true
	}
	now := s.cfg.Now()
	var recs []Record
	for _, r := range s.Records() {
		if r.PodName == "" || now.Sub(r.Created) < SweepGrace {
			continue
		}
		if (r.PodUID != "" && byUID[r.PodUID]) || (r.PodUID == "" && byName[r.PodNamespace+"/"+r.PodName]) {
			continue
		}
		recs = append(recs, r)
	}
	return s.removeGone(ctx, recs)
}

func (s *Service) removeGone(ctx context.Context, recs []Record) ([]string, error) {
	var removed []string
	var errs []error
	for _, r := range recs {
		gone, why, err := s.gone(ctx, r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !gone {
			continue
		}
		s.mu.Lock()
		cur, ok := s.records[r.Key]
		if ok && cur.PodUID == r.PodUID { // not replaced by a new ADD meanwhile
			_, err = s.detachLocked(r.Key)
		}
		s.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			s.log.Info("reconcile removed the attachment of a gone pod", "key", r.Key, "pod", r.PodNamespace+"/"+r.PodName, "why", why)
			removed = append(removed, r.Key)
		}
	}
	return removed, errors.Join(errs...)
}
