package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const apiServer = "https://127.0.0.1:6443"

func (c *Cluster) writePKI(context.Context) error {
	dir := c.pkiDir()
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := NewPKI(dir)
	if err != nil {
		return err
	}
	for _, crt := range Certs(c.o.NodeName, net.ParseIP(c.o.NodeIP)) {
		if err := p.Issue(crt); err != nil {
			return err
		}
	}
	for _, u := range []string{"admin", "controller-manager", "scheduler", "kubelet"} {
		if err := os.WriteFile(filepath.Join(dir, u+".kubeconfig"), []byte(Kubeconfig(dir, u, apiServer)), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, "", []string{"KUBECONFIG=" + c.Kubeconfig()}, c.Kubectl(), args...)
}

func (c *Cluster) startControlPlane(ctx context.Context) error {
	p, b := c.pkiDir(), c.BinDir()
	etcdData := filepath.Join(c.o.WorkDir, "etcd")
	if err := os.RemoveAll(etcdData); err != nil {
		return err
	}
	if err := c.start("etcd", "etcd", "--name", "kube-efvi-e2e", "--data-dir", etcdData,
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "kube-efvi-e2e=http://127.0.0.1:2380", "--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := c.start("kube-apiserver", filepath.Join(b, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address=127.0.0.1", "--advertise-address="+c.o.NodeIP, "--secure-port=6443",
		"--tls-cert-file="+p+"/apiserver.crt", "--tls-private-key-file="+p+"/apiserver.key", "--client-ca-file="+p+"/ca.crt",
		"--service-account-key-file="+p+"/sa.pub", "--service-account-signing-key-file="+p+"/sa.key",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/12", "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--kubelet-client-certificate="+p+"/apiserver-kubelet-client.crt", "--kubelet-client-key="+p+"/apiserver-kubelet-client.key",
		"--allow-privileged=true"); err != nil {
		return err
	}
	if err := poll(ctx, 90*time.Second, func() error {
		_, err := c.kubectl(ctx, "get", "--raw", "/readyz")
		return err
	}); err != nil {
		return fmt.Errorf("kube-apiserver not ready: %w", err)
	}
	if err := c.start("kube-controller-manager", filepath.Join(b, "kube-controller-manager"),
		"--kubeconfig="+p+"/controller-manager.kubeconfig",
		"--authentication-kubeconfig="+p+"/controller-manager.kubeconfig", "--authorization-kubeconfig="+p+"/controller-manager.kubeconfig",
		"--bind-address=127.0.0.1", "--leader-elect=false", "--root-ca-file="+p+"/ca.crt", "--service-account-private-key-file="+p+"/sa.key",
		"--use-service-account-credentials=true", "--cluster-signing-cert-file="+p+"/ca.crt", "--cluster-signing-key-file="+p+"/ca.key",
		"--service-cluster-ip-range=10.96.0.0/12", "--allocate-node-cidrs=true", "--cluster-cidr=10.244.0.0/16", "--node-cidr-mask-size=24"); err != nil {
		return err
	}
	return c.start("kube-scheduler", filepath.Join(b, "kube-scheduler"), "--kubeconfig="+p+"/scheduler.kubeconfig",
		"--authentication-kubeconfig="+p+"/scheduler.kubeconfig", "--authorization-kubeconfig="+p+"/scheduler.kubeconfig",
		"--bind-address=127.0.0.1", "--leader-elect=false")
}

// KubeletConfig is the kubelet's config file.
func KubeletConfig(pki string) string {
	return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ` + pki + `/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ` + pki + `/kubelet-serving.crt
tlsPrivateKeyFile: ` + pki + `/kubelet-serving.key
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
`
}

// StartKubelet (re)starts only the kubelet (e2e tests restart it).
func (c *Cluster) StartKubelet(ctx context.Context) error { return c.startKubelet(ctx) }

// StopKubelet stops the kubelet; pods keep running.
func (c *Cluster) StopKubelet(ctx context.Context) error {
	return c.stop(ctx, "kubelet", 30*time.Second)
}

func (c *Cluster) startKubelet(ctx context.Context) error {
	cfg := filepath.Join(c.confDir(), "kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(KubeletConfig(c.pkiDir())), 0o644); err != nil {
		return err
	}
	if c.running("kubelet") != 0 {
		return errors.New("kubelet is already running")
	}
	// Append, so a restarted kubelet keeps its predecessor's log.
	if err := c.start("kubelet", filepath.Join(c.BinDir(), "kubelet"), "--config="+cfg, "--kubeconfig="+c.pkiDir()+"/kubelet.kubeconfig",
		"--node-ip="+c.o.NodeIP, "--hostname-override="+c.o.NodeName, "--v=1"); err != nil {
		return err
	}
	// The kubelet's own health first: after a restart the node may still
	// show the previous kubelet's Ready condition.
	if err := poll(ctx, 60*time.Second, func() error {
		resp, err := http.Get("http://127.0.0.1:10248/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("kubelet healthz: HTTP %d", resp.StatusCode)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("kubelet not healthy: %w", err)
	}
	if err := poll(ctx, 120*time.Second, func() error {
		out, err := c.kubectl(ctx, "get", "node", c.o.NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(out)) != "True" {
			return fmt.Errorf("node %s Ready=%q", c.o.NodeName, out)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("node not Ready: %w", err)
	}
	return poll(ctx, 60*time.Second, func() error {
		_, err := c.kubectl(ctx, "get", "serviceaccount", "default", "-n", "default")
		return err
	})
}
