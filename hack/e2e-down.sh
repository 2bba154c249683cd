#!/usr/bin/env bash
# make e2e-down: uninstall the chart, remove the fabric, stop the cluster and
# remove the agent's node state. Logs and the Kubernetes build cache stay.
source "$(dirname "$0")/lib.sh"
tools
if "$OUT/e2e/cluster" --work-dir "$E2E_WORK" env >/dev/null 2>&1; then
  cluster_env
  if [ -x "$HELM" ] && "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
    say "helm uninstall $RELEASE (the agent's preStop removes the CNI entry)"
    "$HELM" uninstall "$RELEASE" -n "$NAMESPACE" --wait --timeout 2m 2>&1 || true
    "$KUBECTL" delete namespace "$NAMESPACE" --wait=true --timeout=60s >/dev/null 2>&1 || true
  fi
fi
say "cluster down"
"$OUT/e2e/cluster" --work-dir "$E2E_WORK" down
say "fabric down"
"$OUT/e2e/fabric" down
# The agent keeps its data plane pinned across restarts by design; the test
# node drops it with the fabric.
rm -rf /sys/fs/bpf/kube-efvi /run/efvi /var/lib/efvi
say "e2e-down done"
