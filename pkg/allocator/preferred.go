package allocator

import (
	"fmt"
	"sort"
)

// Preferred answers the kubelet's GetPreferredAllocation for one container:
// size devices from available, always including mustInclude.
//
// Order of preference:
//  1. NUMA: the NUMA node of the mustInclude devices (the majority, when
//     they differ); without them, a node that can hold the whole request —
//     for spread the one with the most free slots, for pack the one with the
//     fewest that still fits. Slots on that node come first.
//  2. Policy: each further slot comes from the port with the most (spread)
//     or fewest (pack) remaining free slots, ties by port name, lowest slot
//     index first.
//
// Slots held by a live allocation, slots not offered, and unhealthy slots are
// never suggested, even when the kubelet lists them as available. When fewer
// than size slots qualify, the answer is shorter (the kubelet then chooses).
func (a *Allocator) Preferred(poolName string, available, mustInclude []string, size int) ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pools[poolName]
	if p == nil {
		return nil, fmt.Errorf("pool %s does not exist", poolName)
	}
	if size <= 0 {
		return nil, fmt.Errorf("pool %s: allocation size %d", poolName, size)
	}
	chosen := map[string]bool{}
	result := make([]string, 0, size)
	numaVotes := map[int]int{}
	for _, d := range mustInclude {
		if chosen[d] {
			continue
		}
		chosen[d] = true
		result = append(result, d)
		if pt, ok := p.offered(d); ok && pt.NUMANode != NUMAUnknown {
			numaVotes[pt.NUMANode]++
		}
	}
	need := size - len(result)
	if need <= 0 {
		return result, nil
	}

	type cand struct {
		id    string
		port  string
		index int
		numa  int
	}
	byPort := map[string][]cand{}
	freeOnNUMA := map[int]int{}
	for _, d := range available {
		if chosen[d] {
			continue
		}
		if _, held := a.held[poolName][d]; held {
			continue
		}
		pt, ok := p.offered(d)
		if !ok || !pt.Healthy {
			continue
		}
		_, idx, _ := ParseDeviceID(d)
		chosen[d] = true // dedupe the kubelet's list
		byPort[pt.Name] = append(byPort[pt.Name], cand{d, pt.Name, idx, pt.NUMANode})
		freeOnNUMA[pt.NUMANode]++
	}
	for _, cs := range byPort {
		sort.Slice(cs, func(i, j int) bool { return cs[i].index < cs[j].index })
	}

	target, haveTarget := NUMAUnknown, false
	if len(numaVotes) > 0 {
		best := -1
		for n, v := range numaVotes {
			if v > best || (v == best && n < target) {
				target, best = n, v
			}
		}
		haveTarget = true
	} else {
		bestFree := -1
		for n, free := range freeOnNUMA {
			if n == NUMAUnknown || free < need {
				continue
			}
			better := bestFree < 0 ||
				(p.spec.Policy == Spread && free > bestFree) ||
				(p.spec.Policy == Pack && free < bestFree) ||
				(free == bestFree && n < target)
			if better {
				target, bestFree, haveTarget = n, free, true
			}
		}
	}

	// Pick one slot at a time: first from ports on the target node, then
	// from any port; within a tier by policy.
	pick := func(onTarget bool) bool {
		bestPort, bestFree := "", 0
		for name, cs := range byPort {
			if len(cs) == 0 || (onTarget && cs[0].numa != target) {
				continue
			}
			free := len(cs)
			better := bestPort == "" ||
				(p.spec.Policy == Spread && free > bestFree) ||
				(p.spec.Policy == Pack && free < bestFree) ||
				(free == bestFree && name < bestPort)
			if better {
				bestPort, bestFree = name, free
			}
		}
		if bestPort == "" {
			return false
		}
		cs := byPort[bestPort]
		result = append(result, cs[0].id)
		byPort[bestPort] = cs[1:]
		return true
	}
	for need > 0 && haveTarget && pick(true) {
		need--
	}
	for need > 0 && pick(false) {
		need--
	}
	return result, nil
}
