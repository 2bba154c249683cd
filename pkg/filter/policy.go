package filter

import (
	"net/netip"
	"slices"
	"syscall"
)

// Policy says which filters a pod may install: ef_vi's EPERM rules
// (MAC/all/sniff/block filters need CAP_NET_ADMIN) recast for pods, which
// never hold capabilities. A pod steers only its own IPs; multicast groups and
// wide filters (see Spec.IsWide) need an explicit allowance.
type Policy struct {
	OwnIPs         []netip.Addr // the pod's IPs
	AllowMulticast bool         // may join multicast groups / multicast MACs / multicast-all/mismatch
	AllowWide      bool         // may install wide filters (IsWide)
}

// Check returns nil if the policy allows s, the Validate error if s is
// invalid (EINVAL), or EPERM with the reason.
func (p Policy) Check(s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	deny := func(format string, args ...any) error {
		return newError(syscall.EPERM, s.String(), format, args...)
	}
	class := s.Class()
	if s.IsWide() && !p.AllowWide {
		return deny("%s filters are wide: they steer traffic not addressed to one of the pod's own IPs; "+
			"the pod needs the wide-filter allowance, or use a udp:/tcp: filter on its own IP", class)
	}
	if s.IsMulticast() && !p.AllowMulticast {
		return deny("the filter receives multicast; the pod needs the multicast allowance")
	}
	if (class == ClassFull || class == ClassLocal) && !s.LocalHost.IsMulticast() {
		if !slices.ContainsFunc(p.OwnIPs, func(a netip.Addr) bool { return a.WithZone("").Unmap() == s.LocalHost }) {
			return deny("local host %s is not one of the pod's IPs %v; a pod steers only its own addresses", s.LocalHost, p.OwnIPs)
		}
	}
	return nil
}
