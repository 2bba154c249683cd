package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Real conflists as primary CNIs write them.
const bridgeConflist = `{
  "cniVersion": "1.0.0",
  "name": "kube-efvi-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
`

const calicoCompact = `{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico","log_level":"info","datastore_type":"kubernetes","ipam":{"type":"calico-ipam"},"policy":{"type":"k8s"},"kubernetes":{"kubeconfig":"/etc/cni/net.d/calico-kubeconfig"}},{"type":"bandwidth","capabilities":{"bandwidth":true}},{"type":"portmap","snat":true,"capabilities":{"portMappings":true}}]}`

const ciliumSingle = `{"cniVersion":"0.3.1","name":"cilium","plugins":[{"type":"cilium-cni","enable-debug":false}]}`

const emptyChain = `{"cniVersion":"1.0.0","name":"x","plugins":[]}`

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type env struct {
	bin, conf, src string
	o              Options
}

func newEnv(t *testing.T, files map[string]string) env {
	t.Helper()
	d := t.TempDir()
	e := env{bin: filepath.Join(d, "opt/cni/bin"), conf: filepath.Join(d, "etc/cni/net.d"), src: filepath.Join(d, "efvi-cni")}
	for _, p := range []string{e.bin, e.conf} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(e.src, []byte("#!/bin/true plugin v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(e.conf, n), []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.o = Options{BinDir: e.bin, ConfDir: e.conf, Source: e.src, Type: "efvi-cni", Config: `{"agentSocket":"/run/efvi/agent.sock"}`}
	return e
}

func (e env) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.conf, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// plugins decodes the chain's types.
func plugins(t *testing.T, s string) []string {
	t.Helper()
	var c struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, s)
	}
	var out []string
	for _, p := range c.Plugins {
		out = append(out, p["type"].(string))
	}
	return out
}

func TestInstallUninstallRoundTrip(t *testing.T) {
	for name, conf := range map[string]string{"bridge": bridgeConflist, "calico": calicoCompact, "cilium": ciliumSingle, "empty": emptyChain} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, map[string]string{"10-net.conflist": conf, "99-other.conflist": bridgeConflist})
			ctx := context.Background()
			if err := Install(ctx, e.o, quiet); err != nil {
				t.Fatal(err)
			}
			got := e.read(t, "10-net.conflist")
			types := plugins(t, got)
			if types[len(types)-1] != "efvi-cni" {
				t.Fatalf("efvi-cni is not last in the chain: %v", types)
			}
			if strings.Count(got, `"efvi-cni"`) != 1 || !strings.Contains(got, `"agentSocket":"/run/efvi/agent.sock"`) {
				t.Fatalf("entry missing or duplicated:\n%s", got)
			}
			if e.read(t, "99-other.conflist") != bridgeConflist {
				t.Fatal("a config that is not the active one was changed")
			}
			st, _ := os.Stat(filepath.Join(e.conf, "10-net.conflist"))
			if st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want the original 0600", st.Mode().Perm())
			}
			if b, err := os.ReadFile(filepath.Join(e.bin, "efvi-cni")); err != nil || string(b) != "#!/bin/true plugin v1" {
				t.Fatalf("binary not installed: %q %v", b, err)
			}
			// Idempotent: a second install changes nothing.
			if err := Install(ctx, e.o, quiet); err != nil {
				t.Fatal(err)
			}
			if again := e.read(t, "10-net.conflist"); again != got {
				t.Fatalf("second install changed the file:\n%s\n---\n%s", got, again)
			}
			if err := Uninstall(ctx, e.o, quiet, nil); err != nil {
				t.Fatal(err)
			}
			if back := e.read(t, "10-net.conflist"); back != conf {
				t.Fatalf("uninstall did not restore the file byte for byte:\n%q\n---\n%q", back, conf)
			}
			if _, err := os.Stat(filepath.Join(e.bin, "efvi-cni")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("binary still there after uninstall: %v", err)
			}
			// Uninstall twice is fine.
			if err := Uninstall(ctx, e.o, quiet, nil); err != nil {
				t.Fatal(err)
			}
			leftovers, _ := filepath.Glob(filepath.Join(e.conf, ".*"))
			if len(leftovers) != 0 {
				t.Fatalf("temp files left: %v", leftovers)
			}
		})
	}
}

func TestInstallKeepsIndentation(t *testing.T) {
	out, changed, err := InsertPlugin([]byte(bridgeConflist), []byte(`{"type":"efvi-cni"}`), "efvi-cni")
	if err != nil || !changed {
		t.Fatal(err, changed)
	}
	want := strings.Replace(bridgeConflist, "\"portMappings\": true}\n    }", "\"portMappings\": true}\n    },\n    {\"type\":\"efvi-cni\"}", 1)
	if string(out) != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
}

func TestInstallWithEntryAlreadyPresent(t *testing.T) {
	// Written by an earlier install with another config, in the middle of the chain.
	pre := `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"efvi-cni","agentSocket":"/old.sock"},{"type":"portmap"}]}`
	e := newEnv(t, map[string]string{"10-n.conflist": pre})
	if err := Install(context.Background(), e.o, quiet); err != nil {
		t.Fatal(err)
	}
	got := e.read(t, "10-n.conflist")
	if types := plugins(t, got); strings.Join(types, ",") != "bridge,portmap,efvi-cni" {
		t.Fatalf("chain %v, want the stale entry replaced at the end", types)
	}
	if strings.Contains(got, "/old.sock") || !strings.Contains(got, "/run/efvi/agent.sock") {
		t.Fatalf("stale entry kept:\n%s", got)
	}
	// An equal entry, wherever it is, is left alone (no write).
	same := `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"efvi-cni", "agentSocket": "/run/efvi/agent.sock"},{"type":"bridge"}]}`
	out, changed, err := InsertPlugin([]byte(same), []byte(`{"agentSocket":"/run/efvi/agent.sock","type":"efvi-cni"}`), "efvi-cni")
	if err != nil || changed || string(out) != same {
		t.Fatalf("equal entry: changed=%v err=%v\n%s", changed, err, out)
	}
	// Removing a first entry takes its separator along.
	out, changed, err = RemovePlugin([]byte(same), "efvi-cni")
	if err != nil || !changed || string(out) != `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}` {
		t.Fatalf("remove first: changed=%v err=%v\n%s", changed, err, out)
	}
}

func TestActiveConfigIsLexicallyFirst(t *testing.T) {
	e := newEnv(t, map[string]string{"20-b.conflist": bridgeConflist, "10-a.conflist": calicoCompact, "05-notes.txt": "x"})
	if err := Install(context.Background(), e.o, quiet); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.read(t, "10-a.conflist"), "efvi-cni") || strings.Contains(e.read(t, "20-b.conflist"), "efvi-cni") {
		t.Fatal("entry not added to the lexically first conflist only")
	}
}

func TestBadInput(t *testing.T) {
	cases := []struct {
		name, file, content, want string
	}{
		{"bad json", "10-x.conflist", `{"name": "x", "plugins": [ {"type": "bridge"}, ]}`, "not JSON"},
		{"truncated", "10-x.conflist", `{"name": "x", "plugins": [`, "not JSON"},
		{"not object", "10-x.conflist", `["bridge"]`, "not a JSON object"},
		{"no plugins", "10-x.conflist", `{"name": "x", "type": "bridge"}`, "no \"plugins\" array"},
		{"plugins not array", "10-x.conflist", `{"name": "x", "plugins": {"type": "bridge"}}`, "not an array"},
		{"plugin without type", "10-x.conflist", `{"name": "x", "plugins": [{"bridge": "cni0"}]}`, "has no \"type\""},
		{"plugin not object", "10-x.conflist", `{"name": "x", "plugins": ["bridge"]}`, "plugins[0] is not an object"},
		{"trailing", "10-x.conflist", `{"name": "x", "plugins": []} {}`, "trailing data"},
		{"single conf", "10-x.conf", `{"cniVersion": "0.3.1", "name": "x", "type": "bridge"}`, "not a .conflist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, map[string]string{c.file: c.content})
			err := Install(context.Background(), e.o, quiet)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
			if !strings.Contains(err.Error(), c.file) && c.name != "single conf" {
				t.Errorf("error does not name the file: %v", err)
			}
			if e.read(t, c.file) != c.content {
				t.Fatal("a bad file was modified")
			}
		})
	}
	t.Run("no config", func(t *testing.T) {
		e := newEnv(t, nil)
		if err := Install(context.Background(), e.o, quiet); err == nil || !strings.Contains(err.Error(), "install the primary CNI") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad plugin config", func(t *testing.T) {
		e := newEnv(t, map[string]string{"10-x.conflist": emptyChain})
		e.o.Config = `{"agentSocket": `
		if err := Install(context.Background(), e.o, quiet); err == nil || !strings.Contains(err.Error(), "--plugin-config") {
			t.Fatalf("err = %v", err)
		}
		e.o.Config = `{"type": "other"}`
		if err := Install(context.Background(), e.o, quiet); err == nil || !strings.Contains(err.Error(), "--plugin-type") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("missing binary", func(t *testing.T) {
		e := newEnv(t, map[string]string{"10-x.conflist": emptyChain})
		e.o.Source = filepath.Join(e.conf, "nope")
		if err := Install(context.Background(), e.o, quiet); err == nil || !strings.Contains(err.Error(), "plugin binary") {
			t.Fatalf("err = %v", err)
		}
		if e.read(t, "10-x.conflist") != emptyChain {
			t.Fatal("config changed although the binary could not be installed")
		}
	})
}

func TestUninstallUnlessDaemonSet(t *testing.T) {
	cases := []struct {
		name   string
		code   int
		body   string
		err    error
		remove bool
	}{
		{"exists", 200, `{"metadata":{"name":"a"}}`, nil, false},
		{"deleting", 200, `{"metadata":{"name":"a","deletionTimestamp":"2026-01-01T00:00:00Z"}}`, nil, true},
		{"gone", 404, `{}`, nil, true},
		{"sa gone", 401, ``, nil, true},
		{"rbac gone", 403, ``, nil, true},
		{"api down", 0, ``, errors.New("connection refused"), false},
		{"server error", 500, ``, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, map[string]string{"10-x.conflist": bridgeConflist})
			if err := Install(context.Background(), e.o, quiet); err != nil {
				t.Fatal(err)
			}
			e.o.Unless = "kube-efvi/kube-efvi-agent"
			var asked string
			get := func(_ context.Context, p string) (int, []byte, error) {
				asked = p
				return c.code, []byte(c.body), c.err
			}
			if err := Uninstall(context.Background(), e.o, quiet, get); err != nil {
				t.Fatal(err)
			}
			if asked != "/apis/apps/v1/namespaces/kube-efvi/daemonsets/kube-efvi-agent" {
				t.Errorf("asked %q", asked)
			}
			removed := !strings.Contains(e.read(t, "10-x.conflist"), "efvi-cni")
			if removed != c.remove {
				t.Fatalf("removed=%v, want %v", removed, c.remove)
			}
		})
	}
	t.Run("agent saw the deletion", func(t *testing.T) {
		e := newEnv(t, map[string]string{"10-x.conflist": bridgeConflist})
		if err := Install(context.Background(), e.o, quiet); err != nil {
			t.Fatal(err)
		}
		e.o.Unless = "kube-efvi/kube-efvi-agent"
		e.o.ReleaseMarker = filepath.Join(t.TempDir(), "release-deleted")
		asked := 0
		exists := func(context.Context, string) (int, []byte, error) {
			asked++
			return 200, []byte(`{"metadata":{"name":"a"}}`), nil
		}
		// No marker: the API server decides (the DaemonSet exists: keep).
		if err := Uninstall(context.Background(), e.o, quiet, exists); err != nil {
			t.Fatal(err)
		}
		if asked != 1 || !strings.Contains(e.read(t, "10-x.conflist"), "efvi-cni") {
			t.Fatalf("asked %d times; entry kept: %v", asked, strings.Contains(e.read(t, "10-x.conflist"), "efvi-cni"))
		}
		if err := os.WriteFile(e.o.ReleaseMarker, []byte("DaemonSet kube-efvi/kube-efvi-agent was deleted\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := Uninstall(context.Background(), e.o, quiet, exists); err != nil {
			t.Fatal(err)
		}
		if asked != 1 || strings.Contains(e.read(t, "10-x.conflist"), "efvi-cni") {
			t.Fatalf("with the marker: asked %d times (want none more), entry removed: %v", asked-1, !strings.Contains(e.read(t, "10-x.conflist"), "efvi-cni"))
		}
	})
	e := newEnv(t, nil)
	e.o.Unless = "no-slash"
	if err := Uninstall(context.Background(), e.o, quiet, nil); err == nil {
		t.Fatal("bad --unless-daemonset accepted")
	}
}

func TestCLI(t *testing.T) {
	e := newEnv(t, map[string]string{"10-x.conflist": bridgeConflist})
	var out, errb bytes.Buffer
	args := []string{"--cni-bin-dir", e.bin, "--cni-conf-dir", e.conf, "--plugin-binary", e.src}
	if code := run(append([]string{"install"}, args...), &out, &errb); code != 0 {
		t.Fatalf("install exit %d: %s", code, errb.String())
	}
	if !strings.Contains(e.read(t, "10-x.conflist"), `{"type":"efvi-cni"}`) {
		t.Fatal("CLI install did not add the default entry")
	}
	if code := run(append([]string{"uninstall"}, args[:4]...), &out, &errb); code != 0 {
		t.Fatalf("uninstall exit %d: %s", code, errb.String())
	}
	if e.read(t, "10-x.conflist") != bridgeConflist {
		t.Fatal("CLI uninstall did not restore the file")
	}
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 {
		t.Fatalf("unknown subcommand exit %d", code)
	}
}

func TestInstallNoChain(t *testing.T) {
	e := newEnv(t, map[string]string{"10-x.conflist": bridgeConflist})
	ctx := context.Background()
	if err := Install(ctx, e.o, quiet); err != nil {
		t.Fatal(err)
	}
	// Switching to binary-only (e.g. cni.install=false on upgrade) removes
	// the chain entry but keeps the binary for Multus attachments.
	var out, errb bytes.Buffer
	if code := run([]string{"install", "--chain=false", "--cni-bin-dir", e.bin, "--cni-conf-dir", e.conf, "--plugin-binary", e.src}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if e.read(t, "10-x.conflist") != bridgeConflist {
		t.Fatal("--chain=false left the chain entry")
	}
	if _, err := os.Stat(filepath.Join(e.bin, "efvi-cni")); err != nil {
		t.Fatalf("--chain=false removed the binary: %v", err)
	}
}

func FuzzInsertRemove(f *testing.F) {
	for _, s := range []string{bridgeConflist, calicoCompact, ciliumSingle, emptyChain, `{"plugins":[{"type":"efvi-cni"}]}`, `{`, `[]`} {
		f.Add([]byte(s))
	}
	entry := []byte(`{"type":"efvi-cni","agentSocket":"/run/efvi/agent.sock"}`)
	f.Fuzz(func(t *testing.T, b []byte) {
		out, _, err := InsertPlugin(b, entry, "efvi-cni")
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("insert produced invalid JSON from %q", b)
		}
		c, err := parseChain(out)
		if err != nil {
			t.Fatalf("insert output does not parse: %v", err)
		}
		n := 0
		for _, p := range c.plugins {
			if p.typ == "efvi-cni" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d efvi-cni entries after insert", n)
		}
		back, _, err := RemovePlugin(out, "efvi-cni")
		if err != nil || !json.Valid(back) {
			t.Fatalf("remove after insert: %v\n%q", err, back)
		}
		if c0, _ := parseChain(b); c0 != nil {
			had := false
			for _, p := range c0.plugins {
				had = had || p.typ == "efvi-cni"
			}
			if !had && !bytes.Equal(back, b) {
				t.Fatalf("remove(insert(f)) != f:\n%q\n%q", b, back)
			}
		}
	})
}
