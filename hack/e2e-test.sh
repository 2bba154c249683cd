#!/usr/bin/env bash
# make e2e: the Go e2e tests (build tag e2e). By default against the cluster
# e2e-up made; with KUBECONFIG naming another cluster, against that one:
#   make e2e KUBECONFIG=~/.kube/config E2E_POOL=sfc0 E2E_NODE=node-1 \
#            E2E_IMAGE=registry.example/kube-efvi/example-app:0.1.0
# (the chart installed there, the pool advertised as efvi.io/<E2E_POOL>).
# Tests that need this host's fabric netns, root on the node or the local
# harness skip, saying why. On failure it prints the agent's, kubelet's and
# pods' logs.
source "$(dirname "$0")/lib.sh"
tools
if [ -n "${KUBECONFIG:-}" ] && [ "$KUBECONFIG" != "$E2E_WORK/pki/admin.kubeconfig" ]; then
  say "e2e against the existing cluster in KUBECONFIG=$KUBECONFIG"
  export E2E_RESOURCE=${E2E_RESOURCE:-efvi.io/${E2E_POOL:-efvi0}}
  export E2E_FABRIC_NS=${E2E_FABRIC_NS:-none} E2E_NODE=${E2E_NODE:-} E2E_LOG_DIR=${E2E_LOG_DIR:-}
  KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
else
  cluster_env
  ensure_helm
  export E2E_HELM=$HELM E2E_VALUES=$E2E_VALUES E2E_CHART=$REPO/charts/kube-efvi E2E_WORK E2E_EFLATENCY=$REPO/bin/eflatency
fi
export E2E_AGENT_NAMESPACE=$NAMESPACE
trap 'rc=$?; [ $rc -eq 0 ] || { echo "e2e FAILED (rc $rc)" >&2; dump_logs; }' EXIT
go test -tags ${E2E_TAGS:-e2e} -count=1 -timeout 20m -v ${E2E_TEST_ARGS:-} ./e2e/...
