// Package attach is the agent side of the efvi-cni plugin: it implements
// cniapi.Agent on top of the VI service's registry (pkg/viservice).
//
// ADD finds the VI slots the pod holds through the kubelet PodResources API
// (List, matched by namespace AND name; the pod's UID is then checked against
// the API server's copy of the pod), reads the pod's filter declaration, and
// installs it under the pod's policy:
//
//   - declaration: the netconf's defaultFilters plus the pod annotation
//     efvi.io/filters (efsink grammar, specs separated by ';' or whitespace).
//     A udp:/tcp: spec without a host applies to each of the pod's IPs from
//     prevResult (dual-stack: one IPv4 and one IPv6 filter); see
//     cniapi.ParseDeclaration.
//   - several VIs: every allocation the pod holds gets the pod's policy (so
//     the SDK can add filters to any of its VIs at run time); the declared
//     filters go to the first VI slot of the first allocation, in the order
//     the kubelet lists the pod's containers and devices. A pod that needs
//     filters on other VIs adds them with the SDK, under the same policy.
//   - policy: the pod steers only its own IPs (prevResult's); multicast and
//     wide filters need the pool's per-namespace allowance (config).
//   - the filters go in all or nothing; Events FilterInstalled or
//     FilterRefused (with the reason) are recorded on the pod.
//   - a pod with no VI (the plugin is chained on every pod) is left alone.
//
// Each attachment (key container id + "/" + ifname) has a Record, written
// BEFORE its filters are installed and kept in a state file, so DEL, GC and
// the pod reconcile can remove exactly that attachment's filters after an
// agent restart, without the netns, prevResult or the pod. DEL is
// idempotent and touches nothing else. A new ADD for a pod whose older
// sandbox still has an attachment on the same network and ifname replaces
// that attachment (the old sandbox is dead; its DEL may never come).
package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/allocator"
	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
	"github.com/kube-efvi/kube-efvi/pkg/viservice"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// Event reasons recorded on pods.
const (
	ReasonInstalled = "FilterInstalled"
	ReasonRefused   = "FilterRefused"
	// ReasonLimit: the pod hit one of its pool's per-allocation limits
	// (pools[].limits); the message names the limit and the field.
	ReasonLimit = "VILimitExceeded"
)

// DeviceLister is the part of the kubelet PodResources API the service uses;
// podresourcesv1.PodResourcesListerClient implements it.
type DeviceLister interface {
	List(ctx context.Context, in *podresourcesv1.ListPodResourcesRequest, opts ...grpc.CallOption) (*podresourcesv1.ListPodResourcesResponse, error)
}

// PodGetter reads a pod from the API server. A missing pod must be an error
// for which apierrors.IsNotFound is true.
type PodGetter interface {
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// EventRecorder records an event on an object; client-go's
// record.EventRecorder implements it.
type EventRecorder interface {
	Event(object runtime.Object, eventtype, reason, message string)
}

// Config configures the service.
type Config struct {
	Registry *viservice.Registry // required
	Devices  DeviceLister        // required: the kubelet PodResources API
	Pods     PodGetter           // required: the API server
	Events   EventRecorder       // optional
	// Allowance returns the filter allowance of pods of namespace ns using
	// pool (config.Pool.FilterPolicy.For). Nil allows nothing beyond the
	// pod's own IPs.
	Allowance func(pool, namespace string) config.Allowance
	// Ready tells STATUS whether the agent can serve ADD. Nil: ready when
	// at least one port is registered.
	Ready func() error
	// StatePath is the attachment state file (e.g.
	// /var/lib/efvi/cni-attachments.json). Empty: memory only (tests).
	StatePath string
	Logger    *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Service implements cniapi.Agent.
type Service struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	records map[string]*Record
}

var _ cniapi.Agent = (*Service)(nil)

// New loads the attachment state and returns the service.
func New(cfg Config) (*Service, error) {
	if cfg.Registry == nil || cfg.Devices == nil || cfg.Pods == nil {
		return nil, errors.New("attach: Registry, Devices and Pods are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	recs, err := loadState(cfg.StatePath)
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, log: cfg.Logger.With("component", "cni"), records: recs}, nil
}

// Records returns a copy of the attachment records, sorted by key.
func (s *Service) Records() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Record, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// podAlloc is one allocation a pod holds.
type podAlloc struct {
	alloc *viservice.Allocation
	id    string
}

// podAllocations returns the allocations holding the pod's devices, in the
// kubelet's container and device order.
func (s *Service) podAllocations(ctx context.Context, ns, name string) ([]podAlloc, error) {
	resp, err := s.cfg.Devices.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, cniapi.Errorf(cniapi.CodeTryAgainLater, err.Error(), "pod %s/%s: the kubelet PodResources API did not answer", ns, name)
	}
	var out []podAlloc
	for _, p := range resp.GetPodResources() {
		if p.GetNamespace() != ns || p.GetName() != name {
			continue
		}
		for _, c := range p.GetContainers() {
			for _, d := range c.GetDevices() {
				for _, dev := range d.GetDeviceIds() {
					id, a, ok := s.cfg.Registry.ByDevice(dev)
					if !ok {
						// Ours (a registered port) but not registered yet: the
						// agent is still restoring its allocations.
						if port, _, pok := allocator.ParseDeviceID(dev); pok {
							if _, known := s.cfg.Registry.Port(port); known {
								return nil, cniapi.Errorf(cniapi.CodeTryAgainLater, "",
									"pod %s/%s holds VI %s (resource %s) but the agent has no allocation for it yet; retry", ns, name, dev, d.GetResourceName())
							}
						}
						continue
					}
					if !strings.HasSuffix(d.GetResourceName(), "/"+a.Pool) {
						continue
					}
					if !slices.ContainsFunc(out, func(pa podAlloc) bool { return pa.id == id }) {
						out = append(out, podAlloc{alloc: a, id: id})
					}
				}
			}
		}
	}
	return out, nil
}

func (s *Service) event(pod *corev1.Pod, typ, reason, msg string) {
	if s.cfg.Events != nil && pod != nil {
		s.cfg.Events.Event(pod, typ, reason, msg)
	}
}

func (s *Service) policy(pool, ns string, ips []netip.Addr) filter.Policy {
	p := filter.Policy{OwnIPs: slices.Clone(ips)}
	if s.cfg.Allowance != nil {
		a := s.cfg.Allowance(pool, ns)
		p.AllowMulticast, p.AllowWide = a.AllowMulticast, a.AllowWide
	}
	return p
}

func validateAttachment(a *cniapi.Attachment) error {
	if a.ContainerID == "" || a.IfName == "" {
		return cniapi.Errorf(cniapi.CodeInternal, "the plugin must send CNI_CONTAINERID and CNI_IFNAME", "attachment without container id or ifname")
	}
	for _, ip := range a.IPs {
		if !ip.IsValid() || ip.Zone() != "" {
			return cniapi.Errorf(cniapi.CodeBadFilter, "prevResult must list plain IPv4/IPv6 addresses", "attachment %s: pod IP %q is not usable", a.Key(), ip)
		}
	}
	return nil
}

// Add implements cniapi.Agent (CNI ADD).
func (s *Service) Add(ctx context.Context, a *cniapi.Attachment) (*cniapi.AddResponse, error) {
	if err := validateAttachment(a); err != nil {
		return nil, err
	}
	key := a.Key()
	if a.PodNamespace == "" || a.PodName == "" {
		s.log.Info("ADD without K8S_POD_NAMESPACE/K8S_POD_NAME: not a Kubernetes pod, nothing to do", "key", key)
		return &cniapi.AddResponse{}, nil
	}
	pod := a.PodNamespace + "/" + a.PodName
	allocs, err := s.podAllocations(ctx, a.PodNamespace, a.PodName)
	if err != nil {
		return nil, err
	}
	if len(allocs) == 0 {
		return &cniapi.AddResponse{}, nil
	}
	obj, err := s.cfg.Pods.GetPod(ctx, a.PodNamespace, a.PodName)
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, cniapi.Errorf(cniapi.CodePodMismatch, err.Error(), "pod %s holds VIs but the API server does not know it", pod)
		}
		return nil, cniapi.Errorf(cniapi.CodeTryAgainLater, err.Error(), "pod %s: reading the pod from the API server failed", pod)
	}
	if a.PodUID != "" && string(obj.UID) != a.PodUID {
		return nil, cniapi.Errorf(cniapi.CodePodMismatch, "the pod was deleted and re-created under the same name; this sandbox belongs to the old one",
			"pod %s: the runtime says UID %s, the API server has UID %s", pod, a.PodUID, obj.UID)
	}
	specs, err := s.declaration(a, obj)
	if err != nil {
		s.event(obj, corev1.EventTypeWarning, ReasonRefused, err.Error())
		return nil, err
	}
	for _, pa := range allocs {
		if err := pa.alloc.SetPolicy(s.policy(pa.alloc.Pool, a.PodNamespace, a.IPs)); err != nil {
			return nil, cniapi.Errorf(cniapi.CodeInternal, err.Error(), "pod %s: set the filter policy of allocation %s", pod, pa.id)
		}
		pa.alloc.SetLimitReporter(func(msg string) { s.event(obj, corev1.EventTypeWarning, ReasonLimit, msg) })
	}
	first := allocs[0].alloc
	devices := slices.Clone(first.Devices)
	texts := make([]string, len(specs))
	for i, sp := range specs {
		texts[i] = sp.String()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// Replace what this key, or an older sandbox of the same pod on this
	// network and ifname, still holds.
	for _, old := range s.recordsLocked(func(r *Record) bool {
		return r.Key == key || (a.PodUID != "" && r.PodUID == a.PodUID && r.Network == a.Network && strings.HasSuffix(r.Key, "/"+a.IfName))
	}) {
		s.log.Info("ADD replaces an earlier attachment of the pod", "key", key, "old", old.Key)
		if _, err := s.detachLocked(old.Key); err != nil {
			return nil, cniapi.Errorf(cniapi.CodeInternal, err.Error(), "pod %s: remove the earlier attachment %s", pod, old.Key)
		}
	}
	rec := &Record{
		Key: key, Network: a.Network, PodNamespace: a.PodNamespace, PodName: a.PodName, PodUID: string(obj.UID),
		IPs: slices.Clone(a.IPs), Port: first.Port.Name, Devices: devices, Filters: texts, Created: s.cfg.Now().UTC(),
	}
	s.records[key] = rec
	if err := saveState(s.cfg.StatePath, s.records); err != nil {
		delete(s.records, key)
		return nil, cniapi.Errorf(cniapi.CodeInternal, err.Error(), "pod %s: record the attachment", pod)
	}
	if len(specs) > 0 {
		if _, err := first.Attach(ctx, key, specs); err != nil {
			delete(s.records, key)
			if serr := saveState(s.cfg.StatePath, s.records); serr != nil {
				s.log.Error("forget a failed attachment", "key", key, "err", serr)
			}
			ce := cniapi.FromFilterError("pod "+pod, err)
			s.event(obj, corev1.EventTypeWarning, ReasonRefused, ce.Msg)
			return nil, ce
		}
	}
	msg := fmt.Sprintf("VI %s: no filters declared (the SDK may add filters for the pod's IPs)", devices[0])
	if len(texts) > 0 {
		msg = fmt.Sprintf("VI %s: %s", devices[0], strings.Join(texts, " "))
	}
	s.event(obj, corev1.EventTypeNormal, ReasonInstalled, msg)
	s.log.Info("attachment installed", "key", key, "pod", pod, "devices", devices, "filters", texts)
	return &cniapi.AddResponse{Devices: devices, Filters: texts}, nil
}

// declaration merges the netconf defaults and the pod annotation.
func (s *Service) declaration(a *cniapi.Attachment, pod *corev1.Pod) ([]filter.Spec, error) {
	bad := func(err error) error {
		return &cniapi.Error{Code: cniapi.CodeBadFilter, Msg: fmt.Sprintf("pod %s/%s: %v", a.PodNamespace, a.PodName, err),
			Details: "filter grammar: " + filter.Grammar, Errno: "EINVAL"}
	}
	defaults, err := cniapi.ParseDeclaration("netconf defaultFilters", a.DefaultFilters, a.IPs)
	if err != nil {
		return nil, bad(err)
	}
	declared, err := cniapi.ParseDeclaration("annotation "+cniapi.Annotation, pod.Annotations[cniapi.Annotation], a.IPs)
	if err != nil {
		return nil, bad(err)
	}
	for _, d := range declared {
		if !slices.Contains(defaults, d) {
			defaults = append(defaults, d)
		}
	}
	if len(defaults) > cniapi.MaxFilters {
		return nil, bad(fmt.Errorf("defaults and annotation together declare %d filters, more than %d", len(defaults), cniapi.MaxFilters))
	}
	return defaults, nil
}

func (s *Service) recordsLocked(match func(*Record) bool) []*Record {
	var out []*Record
	for _, r := range s.records {
		if match(r) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *Record) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// detachLocked removes one attachment's filters wherever they are, and its
// record. It needs neither the pod nor the allocation: with the allocation
// known the slot's idle VI is freed too; otherwise every port drops the key.
func (s *Service) detachLocked(key string) (int, error) {
	var errs []error
	removed := 0
	if rec, ok := s.records[key]; ok {
		removed = len(rec.Filters)
		if len(rec.Devices) > 0 {
			if _, alloc, ok := s.cfg.Registry.ByDevice(rec.Devices[0]); ok {
				if err := alloc.DetachFilters(key); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	for _, p := range s.cfg.Registry.Ports() {
		if slices.Contains(p.Attachments(), key) {
			if err := p.Detach(key); err != nil {
				errs = append(errs, fmt.Errorf("port %s: %w", p.Name, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("detach %s: %w", key, err)
	}
	if _, ok := s.records[key]; ok {
		delete(s.records, key)
		if err := saveState(s.cfg.StatePath, s.records); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// Del implements cniapi.Agent (CNI DEL): idempotent, works without the
// netns, prevResult, the pod or the allocation, and removes only this
// attachment's filters.
func (s *Service) Del(_ context.Context, a *cniapi.Attachment) (*cniapi.DelResponse, error) {
	if a.ContainerID == "" || a.IfName == "" {
		return nil, cniapi.Errorf(cniapi.CodeInternal, "the plugin must send CNI_CONTAINERID and CNI_IFNAME", "DEL without container id or ifname")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.detachLocked(a.Key())
	if err != nil {
		return nil, cniapi.Errorf(cniapi.CodeInternal, err.Error(), "remove the filters of attachment %s", a.Key())
	}
	if n > 0 {
		s.log.Info("attachment removed", "key", a.Key(), "filters", n)
	}
	return &cniapi.DelResponse{Removed: n}, nil
}

// Check implements cniapi.Agent (CNI CHECK): the attachment's filters are in
// the port's table and live in the data plane, for the same pod IPs.
func (s *Service) Check(ctx context.Context, a *cniapi.Attachment) (*cniapi.CheckResponse, error) {
	if err := validateAttachment(a); err != nil {
		return nil, err
	}
	key := a.Key()
	s.mu.Lock()
	rec, ok := s.records[key]
	var r Record
	if ok {
		r = *rec
	}
	s.mu.Unlock()
	if !ok {
		if a.PodNamespace == "" || a.PodName == "" {
			return &cniapi.CheckResponse{}, nil
		}
		allocs, err := s.podAllocations(ctx, a.PodNamespace, a.PodName)
		if err != nil {
			return nil, err
		}
		if len(allocs) > 0 {
			return nil, cniapi.Errorf(cniapi.CodeNotInstalled, "DEL and ADD the attachment again to reinstall it",
				"attachment %s: pod %s/%s holds VIs but the agent has no record of its filters", key, a.PodNamespace, a.PodName)
		}
		return &cniapi.CheckResponse{}, nil
	}
	if len(a.IPs) > 0 && !sameAddrs(a.IPs, r.IPs) {
		return nil, cniapi.Errorf(cniapi.CodePodMismatch, "DEL and ADD the attachment again",
			"attachment %s: the pod's IPs are now %v, its filters were installed for %v", key, a.IPs, r.IPs)
	}
	if len(r.Filters) == 0 {
		return &cniapi.CheckResponse{}, nil
	}
	p, ok := s.cfg.Registry.Port(r.Port)
	if !ok {
		return nil, cniapi.Errorf(cniapi.CodeTryAgainLater, "", "attachment %s: port %s is not registered (the agent is starting or the port is gone)", key, r.Port)
	}
	if err := p.CheckAttachment(key); err != nil {
		return nil, cniapi.FromFilterError("attachment "+key, err)
	}
	return &cniapi.CheckResponse{}, nil
}

func sameAddrs(a, b []netip.Addr) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.SortFunc(x, netip.Addr.Compare)
	slices.SortFunc(y, netip.Addr.Compare)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// GC implements cniapi.Agent (CNI 1.1 GC): every attachment of the network
// missing from the valid list is removed, and so is every attachment a port
// holds that the agent has no record of (its record was lost).
func (s *Service) GC(_ context.Context, r *cniapi.GCRequest) (*cniapi.GCResponse, error) {
	valid := map[string]bool{}
	for _, v := range r.Valid {
		valid[cniapi.Key(v.ContainerID, v.IfName)] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var stale []string
	for _, rec := range s.recordsLocked(func(rec *Record) bool { return rec.Network == r.Network && !valid[rec.Key] }) {
		stale = append(stale, rec.Key)
	}
	for _, p := range s.cfg.Registry.Ports() {
		for _, k := range p.Attachments() {
			if _, known := s.records[k]; !known && !valid[k] && !slices.Contains(stale, k) {
				stale = append(stale, k)
			}
		}
	}
	var errs []error
	var removed []string
	for _, k := range stale {
		if _, err := s.detachLocked(k); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, k)
	}
	if len(removed) > 0 {
		s.log.Info("GC removed stale attachments", "network", r.Network, "keys", removed)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, cniapi.Errorf(cniapi.CodeInternal, err.Error(), "GC of network %s removed %d attachments and failed on others", r.Network, len(removed))
	}
	return &cniapi.GCResponse{Removed: removed}, nil
}

// Status implements cniapi.Agent (CNI 1.1 STATUS).
func (s *Service) Status(context.Context, *cniapi.StatusRequest) (*cniapi.StatusResponse, error) {
	var names []string
	for _, p := range s.cfg.Registry.Ports() {
		names = append(names, p.Name)
	}
	resp := &cniapi.StatusResponse{Ready: true, Ports: names}
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			resp.Ready, resp.Reason = false, err.Error()
		}
	} else if len(names) == 0 {
		resp.Ready, resp.Reason = false, "no VI port is registered yet (the agent is starting, or no pool selects a port on this node)"
	}
	return resp, nil
}
