package agent

import (
	"context"
	"fmt"

	"github.com/kube-efvi/kube-efvi/pkg/config"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/discovery"
)

// Backend serves the pools of one kind (config.Software, config.Hardware).
// main builds one per kind and hands them to the agent (Options.Backends);
// the agent routes each pool's Prepare/Release, port changes and health
// questions to its pool's backend and knows nothing else about it. No
// backend imports this package: the interface is satisfied structurally.
type Backend interface {
	// Prepare and Release serve and free one allocation (its directory,
	// sockets and data-plane or NIC resources). Both are idempotent.
	deviceplugin.BrokerProvider
	// OnPoolPorts is told, outside the agent's lock, a pool's current ports
	// (e.g. to attach a data plane). It may be slow.
	OnPoolPorts(pool config.Pool, ports []discovery.Port)
	// PortHealth reports whether the backend can serve VIs on port for
	// pool: nil, or an error that says why not and what to do. It is asked
	// under the agent's lock and must be fast (no I/O beyond a stat).
	PortHealth(pool config.Pool, port discovery.Port) error
}

// unavailable stands in for a pool kind the agent has no backend for: its
// ports advertise Unhealthy slots and Allocate says why.
type unavailable struct{ kind config.Backend }

func (u unavailable) err() error {
	if u.kind == config.Hardware {
		return fmt.Errorf("this efvi-agent has no hardware backend (built without the onload build tag): hardware pools need an agent built with -tags onload against the node's Onload installation (ONLOAD_PREFIX), or use a software pool")
	}
	return fmt.Errorf("this efvi-agent has no %s backend", u.kind)
}

func (u unavailable) Prepare(context.Context, deviceplugin.PrepareRequest) (deviceplugin.Mount, error) {
	return deviceplugin.Mount{}, u.err()
}
func (u unavailable) Release(context.Context, string, string) error { return nil }
func (u unavailable) OnPoolPorts(config.Pool, []discovery.Port)     {}
func (u unavailable) PortHealth(config.Pool, discovery.Port) error  { return u.err() }
