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
# Uninstall must leave the node as it found it (the agent cleans up when its
# DaemonSet is gone): count what is left before the forced removal below.
left=""
links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^efv[0-9]+v' | cut -d@ -f1 | tr '\n' ' ' || true)
[ -n "$links" ] && left+=" VI veths: $links;"
[ -e /sys/fs/bpf/kube-efvi ] && [ -n "$(ls -A /sys/fs/bpf/kube-efvi 2>/dev/null)" ] && left+=" bpffs pins under /sys/fs/bpf/kube-efvi: $(ls -A /sys/fs/bpf/kube-efvi | tr '\n' ' ');"
[ -d /var/lib/efvi ] && [ -n "$(ls -A /var/lib/efvi 2>/dev/null)" ] && left+=" state in /var/lib/efvi: $(ls -A /var/lib/efvi | tr '\n' ' ');"
if [ -n "$left" ]; then
  say "UNINSTALL LEFT ON THE NODE:$left"
  uninstall_dirty=1
else
  say "uninstall left the node clean (no VI veths, pins or state)"
fi
say "cluster down"
"$OUT/e2e/cluster" --work-dir "$E2E_WORK" down
say "fabric down"
"$OUT/e2e/fabric" down
# The agent keeps its data plane pinned across restarts by design; the test
# node drops it with the fabric.
rm -rf /sys/fs/bpf/kube-efvi /run/efvi /var/lib/efvi
say "e2e-down done"
if [ "${uninstall_dirty:-0}" = 1 ] && [ "${EFVI_REQUIRE_CLEAN_UNINSTALL:-0}" = 1 ]; then
  exit 1
fi
