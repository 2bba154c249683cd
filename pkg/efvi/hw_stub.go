//go:build !onload || !cgo

package efvi

import (
	"context"
	"fmt"
)

// HardwareBuiltIn reports whether this binary has the libciul hardware
// backend (built with -tags onload and cgo).
const HardwareBuiltIn = false

// dialHardware, without the hardware backend, still does the cluster
// handshake in pure Go, so the error says what the agent offers (port,
// resources) or why it refused, and then that this binary cannot use it.
func dialHardware(ctx context.Context, sel Selection) (*Driver, error) {
	g, err := ClusterHandshake(ctx, sel.ClusterSocket, sel.ClusterName, 0)
	if err != nil {
		return nil, fmt.Errorf("efvi: hardware allocation (cluster %q at %s): %w; and this binary has no hardware backend either: %w", sel.ClusterName, sel.ClusterSocket, err, ErrHardwareNotBuilt)
	}
	g.Handle.Close()
	return nil, fmt.Errorf("efvi: the agent offers cluster %q on port %s (PD resource %d, VI set %d) at %s: %w", sel.ClusterName, g.Interface, g.PDResource, g.VISetResource, sel.ClusterSocket, ErrHardwareNotBuilt)
}
