// Package e2e holds kube-efvi's end-to-end tests (build tag e2e) and, in its
// subpackages, what they run on: cluster (a real single-node Kubernetes on
// the host), fabric (the netns at the far end of the node port) and the kind
// provider notes (kind/).
//
// Run them against the cluster `make e2e-up` brings up:
//
//	make e2e-up && make e2e
//
// or directly: KUBECONFIG=... go test -tags e2e ./e2e/...
// Without a reachable cluster every test skips, saying why.
package e2e
