#!/usr/bin/env bash
# make e2e-up: a real single-node Kubernetes on this host, the fabric netns,
# the images imported into containerd, and the chart installed.
source "$(dirname "$0")/lib.sh"
trap 'rc=$?; [ $rc -eq 0 ] || { echo "e2e-up FAILED (rc $rc); logs in $E2E_WORK/logs" >&2; dump_logs; }' EXIT
tools
say "cluster up (logs: $E2E_WORK/logs)"
"$OUT/e2e/cluster" --work-dir "$E2E_WORK" up
cluster_env
say "fabric up"
"$OUT/e2e/fabric" up
ensure_helm
say "images"
"$REPO/hack/images.sh"
for i in "$OUT"/images/agent.tar "$OUT"/images/example-app.tar; do
  ctr -n k8s.io images import "$i" >/dev/null
done
ctr -n k8s.io images ls -q | grep kube-efvi >&2
# The chained CNI plugin goes into the node's conflist only once efvi-cni
# answers CNI VERSION: a plugin that fails every ADD would stop every pod.
cni=()
if out=$(CNI_COMMAND=VERSION bin/efvi-cni </dev/null 2>/dev/null) && grep -q supportedVersions <<<"$out"; then
  say "efvi-cni answers VERSION: installing it into the node's CNI chain"
else
  say "efvi-cni does not implement CNI yet (no VERSION answer): chart installed with cni.install=false"
  cni=(--set cni.install=false)
fi
say "helm install $RELEASE into namespace $NAMESPACE"
"$HELM" upgrade --install "$RELEASE" charts/kube-efvi -n "$NAMESPACE" --create-namespace \
  -f "$E2E_VALUES" "${cni[@]}" ${HELM_ARGS:-} --wait --timeout 3m
"$KUBECTL" -n "$NAMESPACE" get pods -o wide
say "waiting for the node to advertise efvi.io/efvi0"
for _ in $(seq 1 60); do
  cap=$("$KUBECTL" get node "$E2E_NODE" -o jsonpath='{.status.allocatable.efvi\.io/efvi0}')
  [ -n "$cap" ] && [ "$cap" != 0 ] && break; sleep 1
done
[ -n "$cap" ] && [ "$cap" != 0 ] || { echo "node does not advertise efvi.io/efvi0" >&2; exit 1; }
say "e2e-up done: node $E2E_NODE allocatable efvi.io/efvi0=$cap"
echo "export KUBECONFIG=$KUBECONFIG   # kubectl: $KUBECTL" >&2
