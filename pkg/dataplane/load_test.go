package dataplane

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
)

// newTestObjs creates unpinned maps and loads every program.
func newTestObjs(t testing.TB) (*maps, *progs) {
	t.Helper()
	testnet.RequireRoot(t)
	m, _, err := openMaps("", Limits{}.withDefaults())
	if err != nil {
		t.Fatalf("maps: %v", err)
	}
	t.Cleanup(m.close)
	p, err := loadProgs(m)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("verifier rejected a program: %+v", ve)
		}
		t.Fatalf("load programs: %v", err)
	}
	t.Cleanup(p.close)
	return m, p
}

func TestProgramsLoad(t *testing.T) {
	newTestObjs(t)
}
