package config

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const goodYAML = `
agent:
  pluginDir: /var/lib/kubelet/device-plugins
  cdi: {enabled: true, dir: /etc/cdi}
  metricsAddress: "127.0.0.1:9478"
  reconcileInterval: 10s
pools:
- name: fast
  backend: software
  selector: {interfaces: [eth1, eth2]}
  visPerPort: 8
  policy: pack
  filterPolicy:
    default: {allowMulticast: false}
    namespaces:
      trading: {allowMulticast: true, allowWide: false}
- name: nic
  resourcePrefix: example.com
  backend: hardware
  selector: {drivers: [sfc], pciAddresses: ["0000:3b:00.0"], macs: ["00:0F:53:01:02:03"]}
`

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(goodYAML))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := len(c.Pools); got != 2 {
		t.Fatalf("pools = %d, want 2", got)
	}
	fast, nic := c.Pools[0], c.Pools[1]
	if fast.ResourceName() != "efvi.io/fast" || nic.ResourceName() != "example.com/nic" {
		t.Errorf("resource names %q %q", fast.ResourceName(), nic.ResourceName())
	}
	if fast.Policy != Pack || nic.Policy != Spread {
		t.Errorf("policies %q %q", fast.Policy, nic.Policy)
	}
	if nic.VIsPerPort != DefaultHardwareVIsPerPort {
		t.Errorf("hardware default visPerPort = %d", nic.VIsPerPort)
	}
	if !fast.FilterPolicy.For("trading").AllowMulticast || fast.FilterPolicy.For("other").AllowMulticast {
		t.Errorf("filter policy lookup wrong: %+v", fast.FilterPolicy)
	}
	if c.Agent.ReconcileInterval.Duration != 10*time.Second || c.Agent.StateDir != DefaultStateDir || !c.Agent.CDI.Enabled {
		t.Errorf("agent = %+v", c.Agent)
	}
}

func TestParseEmptyIsDefaults(t *testing.T) {
	c, err := Parse(nil)
	if err != nil {
		t.Fatalf("Parse(empty): %v", err)
	}
	if c.Agent.PluginDir != DefaultPluginDir || len(c.Pools) != 0 {
		t.Errorf("got %+v", c)
	}
}

func TestParseBad(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string // every substring must be in the error
	}{
		{"unknown field", "pools:\n- name: a\n  backend: software\n  visPerPort: 1\n  selector: {interfaces: [x]}\n  vis: 3\n", []string{`unknown field "vis"`}},
		{"unknown top", "pool: []\n", []string{`unknown field "pool"`}},
		{"visPerPort zero", "pools:\n- name: a\n  backend: software\n  selector: {interfaces: [x]}\n- name: b\n  backend: software\n  selector: {interfaces: [y]}\n",
			[]string{"pools[0].visPerPort: must be 1..1024, got 0; set it or remove the pool", "pools[1].visPerPort"}},
		{"visPerPort huge", "pools:\n- {name: a, backend: software, visPerPort: 5000, selector: {interfaces: [x]}}\n", []string{"pools[0].visPerPort: must be 1..1024, got 5000"}},
		{"backend", "pools:\n- {name: a, backend: magic, visPerPort: 1, selector: {interfaces: [x]}}\n", []string{`pools[0].backend: must be "software" or "hardware", got "magic"`}},
		{"no backend", "pools:\n- {name: a, visPerPort: 1}\n", []string{"pools[0].backend: is required"}},
		{"name", "pools:\n- {name: Fast_1, backend: hardware}\n", []string{"pools[0].name: must be a DNS label"}},
		{"no name", "pools:\n- {backend: hardware}\n", []string{"pools[0].name: is required"}},
		{"dup name", "pools:\n- {name: a, backend: hardware}\n- {name: a, resourcePrefix: x.io, backend: hardware}\n", []string{`pools[1].name: "a" is already used by pools[0]`}},
		{"prefix", "pools:\n- {name: a, backend: hardware, resourcePrefix: efvi}\n", []string{"pools[0].resourcePrefix: must be a DNS domain"}},
		{"reserved prefix", "pools:\n- {name: a, backend: hardware, resourcePrefix: kubernetes.io}\n", []string{"reserved by Kubernetes"}},
		{"policy", "pools:\n- {name: a, backend: hardware, policy: random}\n", []string{`pools[0].policy: must be "spread" or "pack", got "random"`}},
		{"software selector", "pools:\n- {name: a, backend: software, visPerPort: 2}\n", []string{"pools[0].selector: a software pool needs"}},
		{"iface", "pools:\n- {name: a, backend: software, visPerPort: 2, selector: {interfaces: [\"averyveryverylongname\"]}}\n", []string{"pools[0].selector.interfaces[0]: must be an interface name"}},
		{"iface twice", "pools:\n- {name: a, backend: software, visPerPort: 2, selector: {interfaces: [eth1]}}\n- {name: b, backend: software, visPerPort: 2, selector: {interfaces: [eth1]}}\n", []string{`pools[1].selector.interfaces[0]: interface "eth1" is already selected by pools[0]`}},
		{"pci", "pools:\n- {name: a, backend: hardware, selector: {pciAddresses: [\"3b:00.0\"]}}\n", []string{"pools[0].selector.pciAddresses[0]: must be a lower-case PCI address"}},
		{"mac", "pools:\n- {name: a, backend: hardware, selector: {macs: [\"zz\"]}}\n", []string{"pools[0].selector.macs[0]: must be an Ethernet MAC"}},
		{"driver", "pools:\n- {name: a, backend: hardware, selector: {drivers: [\"a b\"]}}\n", []string{"pools[0].selector.drivers[0]"}},
		{"namespace", "pools:\n- name: a\n  backend: hardware\n  filterPolicy: {namespaces: {\"Bad NS\": {allowWide: true}}}\n", []string{`pools[0].filterPolicy.namespaces["Bad NS"]`}},
		{"relative path", "agent: {stateDir: var/lib}\n", []string{"agent.stateDir: must be an absolute path"}},
		{"metrics", "agent: {metricsAddress: nonsense}\n", []string{"agent.metricsAddress: must be host:port"}},
		{"duration", "agent: {reconcileInterval: 5}\n", []string{"duration"}},
		{"short interval", "agent: {reconcileInterval: 1ms}\n", []string{"agent.reconcileInterval: must be at least 1s"}},
		{"syntax", "pools: [\n", []string{"decode"}},
		{"wrong type", "pools: {name: a}\n", []string{"decode"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded, want error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadNamesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("Load error %v does not name the file", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
}

// TestWatcherConfigMapSwap reproduces how the kubelet updates a ConfigMap
// volume: data lives in a timestamped directory, "..data" is a symlink to
// it, and the visible file is a symlink through "..data". An update writes a
// new directory and renames a new "..data" link over the old one.
func TestWatcherConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	writeVersion := func(name, content string) {
		t.Helper()
		vd := filepath.Join(dir, name)
		if err := os.Mkdir(vd, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vd, "config.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	v1 := "pools:\n- {name: a, backend: hardware}\n"
	writeVersion("..v1", v1)
	path := filepath.Join(dir, "config.yaml")
	if err := os.Symlink("..data/config.yaml", path); err != nil {
		t.Fatal(err)
	}

	changes := make(chan *Config, 4)
	errs := make(chan error, 4)
	w := NewWatcher(path, func(c *Config) { changes <- c }, func(err error) { errs <- err }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	// The agent read v1; v2 lands before the watch starts. Run's first
	// reload must catch it, and once it has, the watch is in place (no sleep).
	writeVersion("..v2", "pools:\n- {name: b, backend: hardware}\n")
	go func() { done <- w.Run(ctx, []byte(v1)) }()
	defer func() { cancel(); <-done }()
	select {
	case c := <-changes:
		if len(c.Pools) != 1 || c.Pools[0].Name != "b" {
			t.Fatalf("reloaded %+v", c.Pools)
		}
	case err := <-errs:
		t.Fatalf("reload error: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the change made before the watch started was lost (10 s hang guard)")
	}

	writeVersion("..v3", "pools:\n- {name: c, backend: software}\n")
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "pools[0].visPerPort") || !strings.Contains(err.Error(), "keeping the previous config") {
			t.Fatalf("error %v", err)
		}
	case c := <-changes:
		t.Fatalf("invalid config was applied: %+v", c)
	case <-time.After(10 * time.Second):
		t.Fatal("no error for a bad config (10 s hang guard)")
	}

	// SIGHUP path: a trigger reloads the (now valid again) file.
	writeVersion("..v4", "pools:\n- {name: d, backend: hardware}\n")
	w.Trigger()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case c := <-changes:
			if c.Pools[0].Name == "d" {
				return
			}
		case err := <-errs:
			t.Fatalf("reload error: %v", err)
		case <-deadline:
			t.Fatal("no reload of v4")
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodYAML))
	f.Add([]byte(""))
	f.Add([]byte("pools:\n- {name: a, backend: hardware}\n"))
	f.Add([]byte("agent: {reconcileInterval: 1h, metricsAddress: off}\n"))
	f.Add([]byte("pools: [{name: x, backend: software, visPerPort: 3, selector: {macs: ['00:00:00:00:00:01']}}]"))
	f.Add([]byte("{\"pools\": null}"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte("version: v1\npools: [{name: a, backend: hardware}]\n"))
	f.Add([]byte("version: v2\n"))
	f.Add([]byte("version: 1\n"))
	f.Add([]byte("version: [v1]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		// A config that parses must survive a round trip unchanged.
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal a parsed config: %v", err)
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of\n%s\nfailed: %v", out, err)
		}
		if !reflect.DeepEqual(normalize(c), normalize(c2)) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, c2)
		}
	})
}

// normalize maps empty maps/slices to nil (omitempty drops them).
func normalize(c *Config) *Config {
	cc := *c
	cc.implicitVersion = false // a re-parse of the marshalled config has the field
	cc.Pools = append([]Pool(nil), c.Pools...)
	if len(cc.Pools) == 0 {
		cc.Pools = nil
	}
	for i := range cc.Pools {
		p := &cc.Pools[i]
		if len(p.FilterPolicy.Namespaces) == 0 {
			p.FilterPolicy.Namespaces = nil
		}
		s := &p.Selector
		for _, l := range []*[]string{&s.Interfaces, &s.Drivers, &s.PCIAddresses, &s.MACs} {
			if len(*l) == 0 {
				*l = nil
			}
		}
	}
	return &cc
}

func TestPoolLimits(t *testing.T) {
	c, err := Parse([]byte(goodYAML))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Pools[0].Limits
	if l.PinnedBytes() != 1<<30 || l.VIs != DefaultLimitVIs || l.Filters != DefaultLimitFilters || l.Connections != DefaultLimitConnections {
		t.Errorf("default limits %+v (pinned %d)", l, l.PinnedBytes())
	}
	c, err = Parse([]byte(strings.Replace(goodYAML, "  policy: pack\n", "  policy: pack\n  limits: {pinnedMemory: 256Mi, vis: 4, filters: 64, connections: 2}\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if l := c.Pools[0].Limits; l.PinnedBytes() != 256<<20 || l.VIs != 4 || l.Filters != 64 || l.Connections != 2 {
		t.Errorf("limits %+v", l)
	}
	_, err = Parse([]byte(strings.Replace(goodYAML, "  policy: pack\n", "  policy: pack\n  limits: {pinnedMemory: lots, vis: -1, filters: 100000, connections: 65}\n", 1)))
	for _, want := range []string{"pools[0].limits.pinnedMemory", "pools[0].limits.vis", "pools[0].limits.filters", "pools[0].limits.connections"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad limits: error %v does not name %s", err, want)
		}
	}
}
