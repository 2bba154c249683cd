//go:build !onload || !cgo

package efvi

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHardwareSDKNotBuiltIn(t *testing.T) {
	a := startAgentCluster(t, "efvi-a1", "eth7")
	t.Setenv(EnvSocket, "")
	t.Setenv(EnvClusterSocket, a.path)
	t.Setenv(EnvClusterName, "efvi-a1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := DialAgent(ctx, "")
	if d != nil || !errors.Is(err, ErrHardwareNotBuilt) {
		t.Fatalf("DialAgent on a hardware allocation without the backend: %v, %v; want ErrHardwareNotBuilt", d, err)
	}
	for _, want := range []string{"eth7", "efvi-a1", "-tags onload"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	a.waitDone(t, 1)

	t.Setenv(EnvClusterName, "nosuch")
	_, err = DialAgent(ctx, "")
	if !errors.Is(err, ErrHardwareNotBuilt) || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown cluster: %v", err)
	}
}

func TestHardwareSDKOnloadPart(t *testing.T) {
	t.Skip("the libciul backend is not in this build: run `make hw-test ONLOAD_PREFIX=/path/to/onload` (an Onload installation with include/etherfabric and lib/libciul.so) for the tagged tests and the wrapper benchmark")
}

var errNoNICForTest = errors.New("unused: the hardware backend is not built in")
