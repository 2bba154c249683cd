package cniapi

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// Annotation is the pod annotation that declares the pod's filters.
const Annotation = "efvi.io/filters"

// MaxFilters bounds the filters one attachment may declare (after the
// dual-stack expansion).
const MaxFilters = 64

// ParseDeclaration parses a filter declaration (efsink grammar, several
// specs separated by ';' or whitespace) for a pod with the given IPs.
//
// A udp:/tcp: spec without a host applies to each of the pod's IPs: on a
// dual-stack pod "udp:5000" becomes one IPv4 and one IPv6 filter. A spec
// with a host, and every non-IP spec, is taken as written. With no IPs a
// host-less spec is an error (the host cannot be guessed). Duplicates are
// dropped, keeping the first. where names the source in errors, e.g.
// "annotation efvi.io/filters".
func ParseDeclaration(where, text string, ips []netip.Addr) ([]filter.Spec, error) {
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	var out []filter.Spec
	add := func(specs []filter.Spec) error {
		for _, s := range specs {
			dup := false
			for _, o := range out {
				if o == s {
					dup = true
					break
				}
			}
			if !dup {
				out = append(out, s)
			}
			if len(out) > MaxFilters {
				return fmt.Errorf("%s declares more than %d filters; declare fewer (the SDK can add more at run time)", where, MaxFilters)
			}
		}
		return nil
	}
	if len(ips) == 0 {
		specs, err := filter.ParseList(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (the pod has no IP from the previous plugin, so every udp:/tcp: filter needs its host)", where, err)
		}
		return out, add(specs)
	}
	for _, ip := range ips {
		specs, err := filter.ParseListWithDefaultHost(text, ip)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if err := add(specs); err != nil {
			return nil, err
		}
	}
	return out, nil
}
