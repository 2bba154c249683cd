#!/usr/bin/env bash
# make demo: bring up the e2e cluster with kube-efvi (hack/e2e-up.sh), then
#  1. run one pod that requests a VI (efvi.io/efvi0: 1) and prints what the
#     agent gave it: EFVI_SOCKET (its broker socket), EFVI_DEVICES (its VI
#     slots) and the socket file;
#  2. run eflatency pong on a pod's VI and ping it with a kernel UDP pinger
#     from the fabric namespace (through the node port efvi0), printing the
#     round-trip latency table;
#  3. run eflatency ping on a second pod's VI against the pong pod's VI (a
#     ping-pong pod pair over VIs, routed through the fabric namespace).
# make demo-down: delete the pod and tear everything down.
source "$(dirname "$0")/lib.sh"
POD=manifests/examples/demo-vi-env.yaml
if [ "${1:-}" = down ]; then
  tools
  if "$OUT/e2e/cluster" --work-dir "$E2E_WORK" env >/dev/null 2>&1; then
    cluster_env
    "$KUBECTL" delete -f "$POD" -f manifests/examples/demo-pong.yaml -f manifests/examples/demo-ping.yaml --ignore-not-found --wait=true --timeout=60s 2>/dev/null || true
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
say "demo: eflatency pong on a VI; kernel UDP pinger in netns efvi-fabric -> node port efvi0 -> the pod's VI and back"
PONG=manifests/examples/demo-pong.yaml
"$KUBECTL" delete -f "$PONG" --ignore-not-found --wait=true >/dev/null
"$KUBECTL" apply -f "$PONG"
"$KUBECTL" wait --for=condition=Ready pod/demo-pong --timeout=120s
for _ in $(seq 1 30); do "$KUBECTL" logs demo-pong 2>/dev/null | grep -q ready && break; sleep 1; done
"$KUBECTL" logs demo-pong
ip=$("$KUBECTL" get pod demo-pong -o jsonpath='{.status.podIP}')
timeout 120 ip netns exec efvi-fabric bin/eflatency ping -dst "$ip:8080" -kernel -n "${DEMO_PINGS:-20000}" -w 2000
say "demo: ping-pong pod pair over VIs: demo-ping's VI -> node port -> fabric (routes) -> node port -> demo-pong's VI and back"
mac=$(ip netns exec efvi-fabric cat /sys/class/net/fabric0/address)
"$KUBECTL" delete pod demo-ping --ignore-not-found --wait=true >/dev/null
sed -e "s/PONG_IP/$ip/" -e "s/FABRIC_MAC/$mac/" manifests/examples/demo-ping.yaml | "$KUBECTL" apply -f -
for _ in $(seq 1 120); do
  phase=$("$KUBECTL" get pod demo-ping -o jsonpath='{.status.phase}')
  case "$phase" in Succeeded|Failed) break ;; esac
  sleep 1
done
"$KUBECTL" logs demo-ping
[ "$phase" = Succeeded ] || { echo "demo-ping ended $phase" >&2; exit 1; }
"$KUBECTL" get node "$E2E_NODE" -o jsonpath='node {.metadata.name}: capacity efvi.io/efvi0={.status.capacity.efvi\.io/efvi0}, allocatable={.status.allocatable.efvi\.io/efvi0}{"\n"}'
say "demo done. KUBECONFIG=$KUBECONFIG; remove with: make demo-down"
