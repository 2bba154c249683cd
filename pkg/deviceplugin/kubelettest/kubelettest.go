// Package kubelettest is a fake kubelet for device-plugin tests: the
// Registration service on <dir>/kubelet.sock over real gRPC, and clients for
// the plugins that register with it. Like the real kubelet, Restart deletes
// every socket in the directory before listening again.
package kubelettest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Registration is one Register call, stamped with its arrival time.
type Registration struct {
	Req *pluginapi.RegisterRequest
	At  time.Time
}

// Kubelet is the fake.
type Kubelet struct {
	pluginapi.UnimplementedRegistrationServer
	Dir string
	// Registrations receives every Register call.
	Registrations chan Registration
	// Listening is when the current kubelet.sock started listening.
	Listening time.Time

	t   testing.TB
	srv *grpc.Server
}

// TempDir makes a short directory (unix socket paths are limited to 108
// bytes, and t.TempDir() paths can be longer) removed at the end of the test.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "efvi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Start listens on <dir>/kubelet.sock.
func Start(t testing.TB, dir string) *Kubelet {
	t.Helper()
	k := &Kubelet{Dir: dir, Registrations: make(chan Registration, 64), t: t}
	k.listen()
	t.Cleanup(k.Stop)
	return k
}

func (k *Kubelet) listen() {
	k.t.Helper()
	sock := filepath.Join(k.Dir, "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		k.t.Fatalf("fake kubelet listen: %v", err)
	}
	k.Listening = time.Now()
	k.srv = grpc.NewServer()
	pluginapi.RegisterRegistrationServer(k.srv, k)
	go k.srv.Serve(lis)
}

// Register implements RegistrationServer.
func (k *Kubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.Registrations <- Registration{Req: r, At: time.Now()}
	return &pluginapi.Empty{}, nil
}

// Stop stops serving and removes kubelet.sock.
func (k *Kubelet) Stop() {
	if k.srv != nil {
		k.srv.Stop()
		k.srv = nil
		os.Remove(filepath.Join(k.Dir, "kubelet.sock"))
	}
}

// Restart behaves like a kubelet restart: stop, delete every socket in the
// directory (the kubelet's device manager does), listen again.
func (k *Kubelet) Restart() {
	k.t.Helper()
	k.Stop()
	ents, err := os.ReadDir(k.Dir)
	if err != nil {
		k.t.Fatal(err)
	}
	for _, e := range ents {
		os.Remove(filepath.Join(k.Dir, e.Name()))
	}
	k.listen()
}

// WaitRegistration returns the next Register call (10 s hang guard).
func (k *Kubelet) WaitRegistration() Registration {
	k.t.Helper()
	select {
	case r := <-k.Registrations:
		return r
	case <-time.After(10 * time.Second):
		k.t.Fatal("no registration within 10 s (hang guard)")
		return Registration{}
	}
}

// Client dials a plugin endpoint (as the kubelet does after Register).
func (k *Kubelet) Client(endpoint string) pluginapi.DevicePluginClient {
	k.t.Helper()
	conn, err := grpc.NewClient("unix:"+filepath.Join(k.Dir, endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		k.t.Fatal(err)
	}
	k.t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}
