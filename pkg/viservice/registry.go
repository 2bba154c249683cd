package viservice

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Registry is the agent's index of ports and live allocations, so the CNI
// side can find the allocation that holds a pod's devices.
type Registry struct {
	mu     sync.Mutex
	ports  map[string]*Port
	allocs map[string]*Allocation // by allocation id
	byDev  map[string]string      // device id -> allocation id
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{ports: map[string]*Port{}, allocs: map[string]*Allocation{}, byDev: map[string]string{}}
}

// AddPort registers a port by its interface name.
func (r *Registry) AddPort(p *Port) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ports[p.Name] = p
}

// Port returns the named port.
func (r *Registry) Port(name string) (*Port, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.ports[name]
	return p, ok
}

// Ports lists the registered ports, sorted by name.
func (r *Registry) Ports() []*Port {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Port, 0, len(r.ports))
	for _, p := range r.ports {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *Port) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Add registers an allocation under id. A device already held by another
// allocation is an error: a slot is never issued twice.
func (r *Registry) Add(id string, a *Allocation) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.allocs[id]; dup {
		return fmt.Errorf("allocation %s is already registered", id)
	}
	for _, d := range a.Devices {
		if other, ok := r.byDev[d]; ok {
			return fmt.Errorf("device %s is already held by allocation %s", d, other)
		}
	}
	r.allocs[id] = a
	for _, d := range a.Devices {
		r.byDev[d] = id
	}
	return nil
}

// Remove forgets an allocation and returns it (nil if unknown).
func (r *Registry) Remove(id string) *Allocation {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.allocs[id]
	if a == nil {
		return nil
	}
	delete(r.allocs, id)
	for _, d := range a.Devices {
		delete(r.byDev, d)
	}
	return a
}

// ByDevice returns the allocation holding a device id.
func (r *Registry) ByDevice(device string) (id string, a *Allocation, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok = r.byDev[device]
	if !ok {
		return "", nil, false
	}
	return id, r.allocs[id], true
}
