package cluster

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestPKI(t *testing.T) {
	dir := t.TempDir()
	p, err := NewPKI(dir)
	if err != nil {
		t.Fatal(err)
	}
	nodeIP := net.ParseIP("192.0.2.2")
	for _, c := range Certs("vm", nodeIP) {
		if err := p.Issue(c); err != nil {
			t.Fatal(err)
		}
	}
	load := func(name string) *x509.Certificate {
		b, err := os.ReadFile(filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	roots := x509.NewCertPool()
	roots.AddCert(load("ca"))
	api := load("apiserver")
	for _, host := range []string{"127.0.0.1", "192.0.2.2", "10.96.0.1", "kubernetes.default.svc"} {
		if _, err := api.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("apiserver cert for %s: %v", host, err)
		}
	}
	if _, err := api.Verify(x509.VerifyOptions{Roots: roots, DNSName: "evil.example"}); err == nil {
		t.Error("apiserver cert valid for a name it does not list")
	}
	kl := load("kubelet")
	if kl.Subject.CommonName != "system:node:vm" || !reflect.DeepEqual(kl.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("kubelet subject %v", kl.Subject)
	}
	if _, err := kl.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("kubelet client cert: %v", err)
	}
	if _, err := kl.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client cert is valid for serving")
	}
	if st, _ := os.Stat(filepath.Join(dir, "admin.key")); st.Mode().Perm() != 0o600 {
		t.Errorf("admin.key mode %v", st.Mode().Perm())
	}
	for _, f := range []string{"sa.key", "sa.pub"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

func TestContainerdConfig(t *testing.T) {
	def := `version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = false
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/opt/cni/bin"
      conf_dir = "/etc/cni/net.d"
`
	got, err := ContainerdConfig(def, "/x/bin", "/x/conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`    restrict_oom_score_adj = true`, `    sandbox_image = "` + PauseImage + `"`, `      bin_dir = "/x/bin"`, `      conf_dir = "/x/conf"`} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
	if _, err := ContainerdConfig("version = 3\n", "/b", "/c"); err == nil || !strings.Contains(err.Error(), "unsupported containerd") {
		t.Fatalf("unknown layout: err = %v", err)
	}
}

func TestStagingReplaces(t *testing.T) {
	gomod := []byte(`module k8s.io/kubernetes

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	github.com/x/y => github.com/x/y v1.0.0
)

replace k8s.io/kubelet => ./staging/src/k8s.io/kubelet
`)
	got := stagingReplaces(gomod)
	if want := []string{"k8s.io/api", "k8s.io/client-go", "k8s.io/kubelet"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if f := versionLDFlags("1.31.0"); !strings.Contains(f, "k8s.io/component-base/version.gitVersion=v1.31.0") || !strings.Contains(f, "gitMinor=31") {
		t.Fatalf("ldflags %q", f)
	}
}

func TestConflistIsValid(t *testing.T) {
	if !strings.Contains(Conflist(), `"name": "`+NetworkName+`"`) {
		t.Fatal("conflist lacks the network name")
	}
	if _, err := New(Options{NodeIP: "127.0.0.1", NodeName: "n", RepoDir: "."}); err == nil {
		t.Fatal("loopback node IP accepted")
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/var/lib/kubelet/pods/a\040b`); got != "/var/lib/kubelet/pods/a b" {
		t.Fatal(got)
	}
}
