package efvitool

import (
	"github.com/kube-efvi/kube-efvi/pkg/efvi/frame"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// Classifier attributes a received frame to one of the filters a tool
// installed, the way the data plane steered it: the first filter class that
// matches wins (full, local, MAC, ethertype/ipproto, all/mismatch, sniff),
// and within a class the first spec given. It is for reporting per-filter
// totals; the data plane has already decided, so a frame that matches none
// (e.g. a filter another VI shares) is reported as Other.
type Classifier struct {
	specs []filter.Spec
	order []int // spec indices in match order
}

// Other is what Match returns for a frame no spec matches.
const Other = -1

// NewClassifier returns a classifier over specs (valid ones, as FilterAdd
// accepted them).
func NewClassifier(specs []filter.Spec) *Classifier {
	c := &Classifier{specs: append([]filter.Spec(nil), specs...)}
	for cl := filter.ClassFull; cl <= filter.ClassBlock; cl++ {
		for i, s := range c.specs {
			if s.Class() == cl {
				c.order = append(c.order, i)
			}
		}
	}
	return c
}

// Match returns the index (in the specs given to NewClassifier) of the
// filter that frame p (parsed by frame.Parse; ok false when it did not
// parse) belongs to, or Other. It does not allocate.
func (c *Classifier) Match(p *frame.Packet, ok bool) int {
	mismatch := Other
	for _, i := range c.order {
		s := &c.specs[i]
		if s.Has(filter.MatchVLAN) && (!p.Tagged || p.VLAN != s.VLAN) {
			continue
		}
		switch {
		case s.Has(filter.MatchLocalHost):
			if !ok || p.Fragment || p.Proto != s.IPProto || p.Dst != s.LocalHost || p.DstPort != s.LocalPort {
				continue
			}
			if s.Has(filter.MatchRemoteHost) && (p.Src != s.RemoteHost || p.SrcPort != s.RemotePort) {
				continue
			}
			return i
		case s.Has(filter.MatchLocalMAC):
			if p.DstMAC != s.LocalMAC {
				continue
			}
			if s.Has(filter.MatchIPProto) && (!ok || p.Proto != s.IPProto) {
				continue
			}
			if s.Has(filter.MatchEtherType) && p.EtherType != s.EtherType {
				continue
			}
			return i
		case s.Has(filter.MatchIPProto):
			if ok && p.IPVersion != 0 && p.Proto == s.IPProto {
				return i
			}
		case s.Has(filter.MatchEtherType):
			if p.EtherType == s.EtherType {
				return i
			}
		case s.Has(filter.MatchUnicastAll):
			if p.DstMAC[0]&1 == 0 {
				return i
			}
		case s.Has(filter.MatchMulticastAll):
			if p.DstMAC[0]&1 != 0 {
				return i
			}
		case s.Has(filter.MatchUnicastMismatch):
			if p.DstMAC[0]&1 == 0 && mismatch == Other {
				mismatch = i
			}
		case s.Has(filter.MatchMulticastMismatch):
			if p.DstMAC[0]&1 != 0 && mismatch == Other {
				mismatch = i
			}
		case s.Has(filter.MatchSniff), s.Has(filter.MatchTxSniff):
			if mismatch == Other {
				return i
			}
		}
	}
	return mismatch
}

// Len is the number of specs.
func (c *Classifier) Len() int { return len(c.specs) }

// Spec returns spec i.
func (c *Classifier) Spec(i int) filter.Spec { return c.specs[i] }
