package allocator

import (
	"strings"
	"testing"
)

func TestDevicesPort(t *testing.T) {
	if p, err := DevicesPort([]string{"eth1-vi0", "eth1-vi7"}, "why"); err != nil || p != "eth1" {
		t.Fatalf("DevicesPort = %q, %v", p, err)
	}
	for _, bad := range [][]string{nil, {"eth1-vi0", "eth2-vi0"}, {"eth1"}} {
		if _, err := DevicesPort(bad, "one PD per port"); err == nil {
			t.Errorf("DevicesPort(%q) accepted", bad)
		}
	}
	if _, err := DevicesPort([]string{"eth1-vi0", "eth2-vi0"}, "one PD per port"); err == nil || !strings.Contains(err.Error(), "one PD per port") {
		t.Errorf("span error %v does not say why", err)
	}
}
