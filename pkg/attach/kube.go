package attach

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// ClientPodGetter reads pods straight from the API server with client-go
// (no cache: an ADD must see the pod's current annotations and UID).
type ClientPodGetter struct {
	Client kubernetes.Interface
}

// GetPod implements PodGetter.
func (g ClientPodGetter) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return g.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// NewEventRecorder returns a client-go event recorder that posts events to
// the API server as component "efvi-agent" on node, and a stop function
// that flushes and ends the broadcaster.
func NewEventRecorder(client kubernetes.Interface, node string) (EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	r := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "efvi-agent", Host: node})
	return r, b.Shutdown
}

// KubeletDevices is a DeviceLister on the kubelet's PodResources socket.
type KubeletDevices struct {
	podresourcesv1.PodResourcesListerClient
	conn *grpc.ClientConn
}

// DialKubelet returns a DeviceLister for the PodResources socket at path
// (config.Agent.PodResourcesSocket). The connection is made lazily.
func DialKubelet(path string) (*KubeletDevices, error) {
	conn, err := grpc.NewClient("unix:"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("kubelet PodResources client %s: %w", path, err)
	}
	return &KubeletDevices{PodResourcesListerClient: podresourcesv1.NewPodResourcesListerClient(conn), conn: conn}, nil
}

// Close closes the connection.
func (k *KubeletDevices) Close() error { return k.conn.Close() }
