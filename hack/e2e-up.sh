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
# The chained CNI plugin goes into the node's conflist only when it works end
# to end: efvi-cni answers CNI VERSION and the agent serves its CNI API socket.
# A chain entry whose ADD fails stops every pod on the node. E2E_CNI=true|false
# forces the choice.
cni=(--set cni.install=false)
case "${E2E_CNI:-auto}" in
  true) cni=(--set cni.install=true) ;;
  auto) if out=$(CNI_COMMAND=VERSION bin/efvi-cni </dev/null 2>/dev/null) && grep -q supportedVersions <<<"$out"; then
          cni=(--set cni.install=true)
        else
          say "efvi-cni does not answer CNI VERSION: chart installed with cni.install=false"
        fi ;;
esac
say "helm install $RELEASE into namespace $NAMESPACE (${cni[*]})"
"$HELM" upgrade --install "$RELEASE" charts/kube-efvi -n "$NAMESPACE" --create-namespace \
  -f "$E2E_VALUES" "${cni[@]}" ${HELM_ARGS:-} --wait --timeout 3m
"$KUBECTL" -n "$NAMESPACE" rollout status ds --timeout 2m
if [ "${cni[1]}" = cni.install=true ] && [ "${E2E_CNI:-auto}" = auto ]; then
  sock=${E2E_AGENT_SOCKET:-/run/efvi/agent.sock}
  for _ in $(seq 1 20); do [ -S "$sock" ] && break; sleep 1; done
  if [ ! -S "$sock" ]; then
    say "the agent does not serve its CNI API ($sock missing): every pod ADD would fail; reinstalling with cni.install=false (the init container removes the chain entry)"
    "$HELM" upgrade "$RELEASE" charts/kube-efvi -n "$NAMESPACE" -f "$E2E_VALUES" --set cni.install=false ${HELM_ARGS:-} --wait --timeout 3m
    "$KUBECTL" -n "$NAMESPACE" rollout status ds --timeout 2m
    for _ in $(seq 1 30); do grep -q '"efvi-cni"' /etc/cni/net.d/*.conflist 2>/dev/null || break; sleep 1; done
  fi
fi
"$KUBECTL" -n "$NAMESPACE" get pods -o wide
say "waiting for the node to advertise efvi.io/efvi0"
for _ in $(seq 1 60); do
  cap=$("$KUBECTL" get node "$E2E_NODE" -o jsonpath='{.status.allocatable.efvi\.io/efvi0}')
  [ -n "$cap" ] && [ "$cap" != 0 ] && break; sleep 1
done
[ -n "$cap" ] && [ "$cap" != 0 ] || { echo "node does not advertise efvi.io/efvi0" >&2; exit 1; }
say "e2e-up done: node $E2E_NODE allocatable efvi.io/efvi0=$cap"
echo "export KUBECONFIG=$KUBECONFIG   # kubectl: $KUBECTL" >&2
