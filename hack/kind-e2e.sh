#!/usr/bin/env bash
# kind provider for the e2e tests — NOT EXERCISED HERE (no image pulls, no
# Docker on the project's machines). See e2e/kind/README.md.
#   hack/kind-e2e.sh up | test | down
source "$(dirname "$0")/lib.sh"
CLUSTER=${KIND_CLUSTER:-kube-efvi}
NODE=$CLUSTER-control-plane
ENGINE=${KIND_ENGINE:-docker}
for t in kind "$ENGINE"; do command -v "$t" >/dev/null || { echo "kind-e2e: $t not found" >&2; exit 1; }; done
case "${1:-}" in
  up)
    make build
    hack/images.sh
    kind create cluster --name "$CLUSTER" --config e2e/kind/kind-config.yaml
    for i in agent example-app; do kind load image-archive "$OUT/images/$i.tar" --name "$CLUSTER"; done
    CGO_ENABLED=0 go build -o "$OUT/e2e/fabric" ./e2e/cmd/fabric
    "$ENGINE" cp "$OUT/e2e/fabric" "$NODE:/usr/local/bin/efvi-fabric"
    "$ENGINE" exec "$NODE" efvi-fabric up
    ensure_helm
    "$HELM" upgrade --install "$RELEASE" charts/kube-efvi -n "$NAMESPACE" --create-namespace \
      -f "$E2E_VALUES" --set apiServer.host= --set apiServer.port= --wait --timeout 5m ;;
  test)
    kind export kubeconfig --name "$CLUSTER" --kubeconfig "$OUT/kind.kubeconfig"
    KUBECONFIG=$OUT/kind.kubeconfig E2E_NODE=$NODE E2E_AGENT_NAMESPACE=$NAMESPACE \
      go test -tags e2e -count=1 -timeout 20m -v ./e2e/ ;;
  down)
    kind delete cluster --name "$CLUSTER" ;;
  *) echo "usage: $0 up|test|down" >&2; exit 2 ;;
esac
