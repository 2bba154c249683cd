package allocator

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// maxPodResourcesMsg bounds a List answer (the kubelet's own client uses 16 MiB).
const maxPodResourcesMsg = 16 << 20

// PodResources lists the devices the kubelet has assigned, through the
// kubelet PodResources API (v1 List) on its unix socket.
type PodResources struct {
	conn   *grpc.ClientConn
	client podresourcesv1.PodResourcesListerClient
}

// DialPodResources returns a client for the socket at path. The connection
// is made lazily, so a kubelet that is not up yet is not an error here.
func DialPodResources(path string) (*PodResources, error) {
	conn, err := grpc.NewClient("unix:"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxPodResourcesMsg)))
	if err != nil {
		return nil, fmt.Errorf("pod resources client %s: %w", path, err)
	}
	return &PodResources{conn: conn, client: podresourcesv1.NewPodResourcesListerClient(conn)}, nil
}

// List returns every device of every container the kubelet reports.
func (p *PodResources) List(ctx context.Context) ([]Held, error) {
	resp, err := p.client.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("kubelet PodResources List: %w", err)
	}
	var out []Held
	for _, pod := range resp.GetPodResources() {
		for _, c := range pod.GetContainers() {
			owner := Owner{Namespace: pod.GetNamespace(), Pod: pod.GetName(), Container: c.GetName()}
			for _, d := range c.GetDevices() {
				for _, id := range d.GetDeviceIds() {
					out = append(out, Held{Resource: d.GetResourceName(), Device: id, Owner: owner})
				}
			}
		}
	}
	return out, nil
}

// Close closes the connection.
func (p *PodResources) Close() error { return p.conn.Close() }
