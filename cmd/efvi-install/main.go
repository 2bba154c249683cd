// Command efvi-install installs kube-efvi's chained CNI plugin on a node and
// removes it again. The Helm chart runs `install` as the agent pod's init
// container and `uninstall` from the agent container's preStop hook.
//
// install copies the efvi-cni binary into the CNI bin dir (atomically,
// skipped when identical) and then appends {"type": "efvi-cni", ...} to the
// plugins of the node's active network config: the lexically first
// .conf/.conflist/.json file in the CNI conf dir, which is the one
// containerd and CRI-O use. The edit splices bytes, so the rest of the file
// keeps its formatting, and an equal entry already present means no write.
// It waits (--wait) for the primary network plugin to write its config.
//
// uninstall removes every efvi-cni entry from every conflist in the conf
// dir, each with exactly the bytes install added (so install+uninstall
// restores the file byte for byte), then the binary. With --unless-daemonset
// NAMESPACE/NAME it first asks the API server whether that DaemonSet still
// exists; if it does (an agent restart, a rolling update, an eviction) it
// keeps everything, because pods created in the gap would otherwise start
// without their filters. It uninstalls when the DaemonSet is gone or being
// deleted, or when the API refuses the pod's credentials (401/403: the
// release's ServiceAccount and RBAC are deleted together with it). Network
// errors keep the entry: removing it wrongly is worse than leaving a chain
// entry whose plugin passes pods through.
//
// Every write is atomic: a temp file in the same directory, fsync, rename.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kube-efvi/kube-efvi/internal/atomicfile"
)

const usage = `efvi-install: install or remove kube-efvi's chained CNI plugin on this node.

Usage:
  efvi-install install   [flags]   copy the plugin binary, append it to the active conflist
  efvi-install uninstall [flags]   remove the conflist entries and the binary

Flags:
`

// Options are the flags.
type Options struct {
	BinDir  string
	ConfDir string
	Source  string
	Type    string
	Config  string // extra JSON fields of the entry
	Wait    time.Duration
	Unless  string // NAMESPACE/NAME of a DaemonSet
	// ReleaseMarker is the file the agent writes when its watch sees the
	// DaemonSet deleted (pkg/release): present, the release is gone without
	// asking the API server, whose answer helm's deletion of the RBAC and
	// the ServiceAccount may already have taken away.
	ReleaseMarker string
	APIServer     string // override https://host:port
	TokenDir      string
	// NoChain (install --chain=false) copies the binary only (for Multus
	// network attachments) and removes chain entries an earlier install left.
	NoChain bool
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "install" && args[0] != "uninstall") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, usage)
			newFlags(&Options{}, stdout).PrintDefaults()
			return 0
		}
		fmt.Fprint(stderr, usage)
		newFlags(&Options{}, stderr).PrintDefaults()
		return 2
	}
	var o Options
	fs := newFlags(&o, stderr)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	if args[0] == "install" {
		err = Install(ctx, o, log)
	} else {
		err = Uninstall(ctx, o, log, nil)
	}
	if err != nil {
		fmt.Fprintf(stderr, "efvi-install %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func newFlags(o *Options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("efvi-install", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.BinDir, "cni-bin-dir", "/host/opt/cni/bin", "node's CNI plugin directory (mounted)")
	fs.StringVar(&o.ConfDir, "cni-conf-dir", "/host/etc/cni/net.d", "node's CNI config directory (mounted)")
	fs.StringVar(&o.Source, "plugin-binary", "/usr/bin/efvi-cni", "plugin binary to copy (install)")
	fs.StringVar(&o.Type, "plugin-type", "efvi-cni", "plugin type: the entry's \"type\" and the binary's name in the bin dir")
	fs.StringVar(&o.Config, "plugin-config", "{}", "JSON object of extra fields for the entry, e.g. {\"agentSocket\":\"/run/efvi/agent.sock\"}")
	fs.BoolFunc("chain", "install: append the plugin to the node's active conflist (default true); --chain=false: copy the binary only and remove entries an earlier install added (Multus users)", func(v string) error {
		b, err := strconv.ParseBool(v)
		o.NoChain = !b
		return err
	})
	fs.DurationVar(&o.Wait, "wait", 0, "install: wait this long for the primary network's config to appear (0: fail at once)")
	fs.StringVar(&o.Unless, "unless-daemonset", "", "uninstall: NAMESPACE/NAME; keep everything while that DaemonSet exists")
	fs.StringVar(&o.ReleaseMarker, "release-marker", "", "uninstall: file the agent writes when it saw its DaemonSet deleted; present: uninstall without asking the API server")
	fs.StringVar(&o.APIServer, "api-server", "", "uninstall: API server URL (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
	fs.StringVar(&o.TokenDir, "token-dir", "/var/run/secrets/kubernetes.io/serviceaccount", "uninstall: service account token and ca.crt")
	return fs
}

// Entry builds the chain entry: {"type": typ} plus the extra fields.
func Entry(typ, extra string) ([]byte, error) {
	m := map[string]any{}
	if strings.TrimSpace(extra) != "" {
		if err := json.Unmarshal([]byte(extra), &m); err != nil {
			return nil, fmt.Errorf("--plugin-config %q: want a JSON object: %w", extra, err)
		}
	}
	if t, ok := m["type"]; ok && t != typ {
		return nil, fmt.Errorf("--plugin-config sets \"type\" to %v; the type comes from --plugin-type (%s)", t, typ)
	}
	m["type"] = typ
	return json.Marshal(m) // keys sorted: the same entry every time
}

// confExts are the config file extensions libcni (containerd, CRI-O) reads.
var confExts = map[string]bool{".conf": true, ".conflist": true, ".json": true}

// ActiveConfig is the lexically first network config file in dir ("" if none).
func ActiveConfig(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("CNI conf dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && confExts[filepath.Ext(e.Name())] {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", nil
	}
	sort.Strings(names)
	return filepath.Join(dir, names[0]), nil
}

// Install copies the binary, then adds the entry to the active conflist.
func Install(ctx context.Context, o Options, log *slog.Logger) error {
	entry, err := Entry(o.Type, o.Config)
	if err != nil {
		return err
	}
	dst := filepath.Join(o.BinDir, o.Type)
	copied, err := installBinary(o.Source, dst)
	if err != nil {
		return err
	}
	log.Info("plugin binary", "path", dst, "updated", copied)
	if o.NoChain {
		return removeEntries(o, log)
	}
	var conf string
	deadline := time.Now().Add(o.Wait)
	for {
		if conf, err = ActiveConfig(o.ConfDir); err != nil {
			return err
		}
		if conf != "" || !time.Now().Before(deadline) {
			break
		}
		log.Info("waiting for the node's network config", "dir", o.ConfDir)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	if conf == "" {
		return fmt.Errorf("no network config (*.conflist) in %s: install the primary CNI (e.g. bridge, Calico, Cilium) first, or raise --wait", o.ConfDir)
	}
	if filepath.Ext(conf) != ".conflist" {
		return fmt.Errorf("%s is the node's active network config but not a .conflist: a chained plugin needs a plugin chain; convert it to a .conflist (a \"plugins\" list)", conf)
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	out, changed, err := InsertPlugin(b, entry, o.Type)
	if err != nil {
		return fmt.Errorf("%s: %w", conf, err)
	}
	if changed {
		if err := writeAtomic(conf, out); err != nil {
			return err
		}
	}
	log.Info("network config", "path", conf, "entry", string(entry), "updated", changed)
	return nil
}

// Uninstall removes the entries and the binary; apiGet (nil: real API) checks --unless-daemonset.
func Uninstall(ctx context.Context, o Options, log *slog.Logger, apiGet func(ctx context.Context, path string) (int, []byte, error)) error {
	if o.Unless != "" {
		ns, name, ok := strings.Cut(o.Unless, "/")
		if !ok || ns == "" || name == "" {
			return fmt.Errorf("--unless-daemonset %q: want NAMESPACE/NAME", o.Unless)
		}
		if apiGet == nil {
			apiGet = o.inClusterGet
		}
		keep, why := true, ""
		if b, err := os.ReadFile(o.ReleaseMarker); o.ReleaseMarker != "" && err == nil {
			keep, why = false, "the agent saw the release deleted: "+strings.TrimSpace(string(b))
		} else {
			keep, why = daemonSetAlive(ctx, apiGet, ns, name)
		}
		if keep {
			log.Info("keeping the CNI plugin installed", "reason", why)
			return nil
		}
		log.Info("uninstalling the CNI plugin", "reason", why)
	}
	err := removeEntries(o, log)
	// The binary goes last: no config may name a missing plugin.
	if err != nil {
		return err
	}
	var errs []error
	bin := filepath.Join(o.BinDir, o.Type)
	if err := os.Remove(bin); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	} else {
		log.Info("removed the plugin binary", "path", bin)
	}
	return errors.Join(errs...)
}

// removeEntries removes the plugin's entries from every conflist in the conf dir.
func removeEntries(o Options, log *slog.Logger) error {
	ents, err := os.ReadDir(o.ConfDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("CNI conf dir: %w", err)
	}
	var errs []error
	for _, e := range ents {
		if !e.Type().IsRegular() || filepath.Ext(e.Name()) != ".conflist" {
			continue
		}
		p := filepath.Join(o.ConfDir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out, changed, err := RemovePlugin(b, o.Type)
		if err != nil {
			// Not ours to judge: another file may simply not be a conflist.
			log.Warn("skipping unparsable config", "path", p, "err", err)
			continue
		}
		if changed {
			if err := writeAtomic(p, out); err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info("removed the entry", "path", p)
		}
	}
	return errors.Join(errs...)
}

// daemonSetAlive decides whether to keep the plugin.
func daemonSetAlive(ctx context.Context, get func(context.Context, string) (int, []byte, error), ns, name string) (bool, string) {
	code, body, err := get(ctx, "/apis/apps/v1/namespaces/"+ns+"/daemonsets/"+name)
	switch {
	case err != nil:
		return true, fmt.Sprintf("cannot ask the API server whether DaemonSet %s/%s still exists (%v); keeping the plugin (remove it by hand with `efvi-install uninstall` if the release is gone)", ns, name, err)
	case code == http.StatusNotFound:
		return false, fmt.Sprintf("DaemonSet %s/%s is gone", ns, name)
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return false, fmt.Sprintf("the API server refuses this pod's credentials (HTTP %d): the release's ServiceAccount/RBAC are being deleted", code)
	case code != http.StatusOK:
		return true, fmt.Sprintf("unexpected HTTP %d asking for DaemonSet %s/%s; keeping the plugin", code, ns, name)
	}
	var ds struct {
		Metadata struct {
			DeletionTimestamp *string `json:"deletionTimestamp"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &ds); err != nil {
		return true, fmt.Sprintf("unreadable DaemonSet %s/%s (%v); keeping the plugin", ns, name, err)
	}
	if ds.Metadata.DeletionTimestamp != nil {
		return false, fmt.Sprintf("DaemonSet %s/%s is being deleted", ns, name)
	}
	return true, fmt.Sprintf("DaemonSet %s/%s still exists (agent restart or update)", ns, name)
}

// inClusterGet does an authenticated GET with the pod's service account.
func (o Options) inClusterGet(ctx context.Context, path string) (int, []byte, error) {
	server := o.APIServer
	if server == "" {
		h, p := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if h == "" || p == "" {
			return 0, nil, errors.New("KUBERNETES_SERVICE_HOST/PORT unset and no --api-server")
		}
		server = "https://" + net.JoinHostPort(h, p)
	}
	token, err := os.ReadFile(filepath.Join(o.TokenDir, "token"))
	if err != nil {
		return 0, nil, fmt.Errorf("service account token: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(o.TokenDir, "ca.crt"))
	if err != nil {
		return 0, nil, fmt.Errorf("service account CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return 0, nil, errors.New("service account ca.crt holds no certificate")
	}
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(server, "/")+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

// installBinary copies src to dst unless dst already has the same content.
func installBinary(src, dst string) (bool, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("plugin binary: %w", err)
	}
	if old, err := os.ReadFile(dst); err == nil && sha256.Sum256(old) == sha256.Sum256(b) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	return true, writeFile(dst, b, 0o755)
}

// writeAtomic replaces p keeping its mode.
func writeAtomic(p string, b []byte) error {
	mode := os.FileMode(0o644)
	if st, err := os.Stat(p); err == nil {
		mode = st.Mode().Perm()
	}
	return writeFile(p, b, mode)
}

// writeFile replaces p durably through a temp file in the same directory (a
// name no CNI loader reads: its extension is .tmp-*).
func writeFile(p string, b []byte, mode os.FileMode) error {
	if err := atomicfile.Write(p, b, mode, true); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}
