package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Cert is one client or serving certificate to issue.
type Cert struct {
	Name   string // file base name
	CN     string
	Orgs   []string
	DNS    []string
	IPs    []net.IP
	Server bool
}

// Certs lists the certificates the cluster needs.
func Certs(node string, nodeIP net.IP) []Cert {
	return []Cert{
		{Name: "apiserver", CN: "kube-apiserver", Server: true,
			DNS: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", node},
			IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1), nodeIP}},
		{Name: "kubelet-serving", CN: "system:node:" + node, Orgs: []string{"system:nodes"}, Server: true,
			DNS: []string{"localhost", node}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), nodeIP}},
		{Name: "admin", CN: "kubernetes-admin", Orgs: []string{"system:masters"}},
		{Name: "apiserver-kubelet-client", CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}},
		{Name: "controller-manager", CN: "system:kube-controller-manager"},
		{Name: "scheduler", CN: "system:kube-scheduler"},
		{Name: "kubelet", CN: "system:node:" + node, Orgs: []string{"system:nodes"}},
	}
}

// PKI is a CA and the key pair it signs with.
type PKI struct {
	Dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

// NewPKI makes a fresh CA in dir (ca.crt, ca.key) and the service-account
// key pair (sa.key, sa.pub; RSA, as the apiserver's token signer wants).
func NewPKI(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kube-efvi-e2e-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, ca: ca, caKey: key, serial: 1}
	if err := p.writeCert("ca", der, key); err != nil {
		return nil, err
	}
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(dir, "sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa), 0o600); err != nil {
		return nil, err
	}
	if err := writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

// Issue signs c and writes <Name>.crt and <Name>.key.
func (p *PKI) Issue(c Cert) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	p.serial++
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: c.CN, Organization: c.Orgs},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:    c.DNS, IPAddresses: c.IPs,
	}
	if c.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return fmt.Errorf("certificate %s: %w", c.Name, err)
	}
	return p.writeCert(c.Name, der, key)
}

func (p *PKI) writeCert(name string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(p.Dir, name+".key"), "EC PRIVATE KEY", kb, 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(p.Dir, name+".crt"), "CERTIFICATE", der, 0o644)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// Kubeconfig renders a kubeconfig for the user whose cert/key are <name>.crt/.key in dir.
func Kubeconfig(dir, name, server string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kube-efvi-e2e
  cluster:
    certificate-authority: %[1]s/ca.crt
    server: %[3]s
users:
- name: %[2]s
  user:
    client-certificate: %[1]s/%[2]s.crt
    client-key: %[1]s/%[2]s.key
contexts:
- name: kube-efvi-e2e
  context: {cluster: kube-efvi-e2e, user: %[2]s}
current-context: kube-efvi-e2e
`, dir, name, server)
}
