#!/usr/bin/env bash
# make demo: bring up the e2e cluster with kube-efvi (hack/e2e-up.sh), then
# run one pod that requests a VI (efvi.io/efvi0: 1) and prints what the agent
# gave it: EFVI_SOCKET (its broker socket), EFVI_DEVICES (its VI slots) and the
# socket file. (The ping-pong latency pair replaces this pod once the SDK
# tools are in the example-app image.)
# make demo-down: delete the pod and tear everything down.
source "$(dirname "$0")/lib.sh"
POD=manifests/examples/demo-vi-env.yaml
if [ "${1:-}" = down ]; then
  tools
  if "$OUT/e2e/cluster" --work-dir "$E2E_WORK" env >/dev/null 2>&1; then
    cluster_env
    "$KUBECTL" delete -f "$POD" --ignore-not-found --wait=true --timeout=60s 2>/dev/null || true
  fi
  exec "$REPO/hack/e2e-down.sh"
fi
"$REPO/hack/e2e-up.sh"
tools
cluster_env
trap 'rc=$?; [ $rc -eq 0 ] || { echo "demo FAILED (rc $rc)" >&2; dump_logs; }' EXIT
say "demo: a pod requesting efvi.io/efvi0: 1 prints the VI the agent handed it"
"$KUBECTL" delete -f "$POD" --ignore-not-found --wait=true >/dev/null
"$KUBECTL" apply -f "$POD"
"$KUBECTL" wait --for=condition=Ready pod/demo-vi-env --timeout=120s
sleep 1
echo "----- kubectl logs demo-vi-env"
"$KUBECTL" logs demo-vi-env
echo "-----"
"$KUBECTL" get node "$E2E_NODE" -o jsonpath='node {.metadata.name}: capacity efvi.io/efvi0={.status.capacity.efvi\.io/efvi0}, allocatable={.status.allocatable.efvi\.io/efvi0}{"\n"}'
say "demo done. KUBECONFIG=$KUBECONFIG; remove with: make demo-down"
