package hwvi_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin"
	"github.com/kube-efvi/kube-efvi/pkg/deviceplugin/envvar"
	"github.com/kube-efvi/kube-efvi/pkg/hwvi"
)

// TestClusterHandshakeLibciul runs Onload's real client — libciul's
// ef_pd_alloc_by_name(), in a small C program of ours linked against the
// Onload installation at $ONLOAD_PREFIX — against the agent's cluster server
// as the hardware backend serves it for an allocation. The handshake needs no
// NIC; the calls after it do, and this is where they fail here.
func TestClusterHandshakeLibciul(t *testing.T) {
	prefix := os.Getenv("ONLOAD_PREFIX")
	if prefix == "" {
		t.Skip("ONLOAD_PREFIX is not set: set it to an Onload installation prefix (<prefix>/include/etherfabric/*.h and <prefix>/lib/libciul.so) to run libciul's ef_pd_alloc_by_name() against the agent's cluster server")
	}
	for _, p := range []string{"include/etherfabric/pd.h", "lib/libciul.so"} {
		if _, err := os.Stat(filepath.Join(prefix, p)); err != nil {
			t.Fatalf("ONLOAD_PREFIX=%s is not an Onload installation: %v", prefix, err)
		}
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	bin := filepath.Join(t.TempDir(), "cluster_client")
	build := exec.Command(cc, "-Wall", "-Werror", "-I"+filepath.Join(prefix, "include"), "testdata/cluster_client.c",
		"-L"+filepath.Join(prefix, "lib"), "-lciul", "-Wl,-rpath,"+filepath.Join(prefix, "lib"), "-o", bin)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the C client against %s: %v\n%s", prefix, err, out)
	}

	nic := &fakeNIC{}
	b := hwvi.New(hwvi.Config{BrokerRoot: t.TempDir(), NIC: nic, DevFS: fstest.MapFS{"dev/sfc_char": &fstest.MapFile{}},
		InterfaceIndex: func(string) (int, error) { return 5, nil }})
	defer b.Close()
	m, err := b.Prepare(context.Background(), deviceplugin.PrepareRequest{Pool: "nic", Resource: "efvi.io/nic", AllocationID: "a1", Devices: []string{"sfc0-vi0", "sfc0-vi1"}})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(m.HostPath, envvar.ClusterSocketName)
	run := func(cluster string) (string, error) {
		cmd := exec.Command(bin, cluster)
		cmd.Env = append(os.Environ(), envvar.ClusterSocket+"="+sock)
		out, err := cmd.CombinedOutput()
		t.Logf("C client %q:\n%s", cluster, out)
		return string(out), err
	}

	out, err := run(m.Env[envvar.ClusterName])
	if err != nil {
		t.Fatalf("C client: %v", err)
	}
	for _, want := range []string{
		"ef_pd_alloc_by_name(nic) = 0 (ok)",
		"pd_resource_id=7 viset_resource_id=9 intf=sfc0 cluster_dh_valid=1",
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("libciul did not get the PD from the agent: want %q in the output", want)
		}
	}
	t.Log("libciul's ef_pd_alloc_by_name() got the PD and VI set from the agent's cluster server (with the passed driver handle)")
	switch {
	case strings.Contains(out, "ef_driver_open = -2"):
		t.Log("ef_driver_open failed with ENOENT: this machine has no /dev/sfc_char. This is where hardware starts: " +
			"allocating the VI from the VI set, the filters and traffic need a Solarflare NIC with Onload's drivers (untested here)")
	case strings.Contains(out, "ef_driver_open = 0"):
		t.Log("ef_driver_open succeeded: this machine has /dev/sfc_char; the VI allocation line above is the hardware's answer")
	default:
		t.Fatalf("unexpected ef_driver_open result")
	}

	// A name the agent does not serve: ENOENT, and libciul falls back to
	// ef_pd_alloc on an interface of that name, which does not exist.
	out, _ = run("no-such-cluster")
	if !strings.Contains(out, "ef_pd_alloc_by_name(no-such-cluster) = -19") {
		t.Fatalf("unknown cluster: want libciul's ENOENT fallback to end in -ENODEV")
	}
}
