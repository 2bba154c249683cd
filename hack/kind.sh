#!/usr/bin/env bash
# The e2e on kind: a two-node cluster (control plane + worker) in Docker,
# Kubernetes v$K8S_VERSION, each node with a "Solarflare port" efvi0 on one
# fabric (netns efvi-kind-fabric on the host), the chart installed with helm.
#   hack/kind.sh up     (make kind-up)
#   hack/kind.sh test   (make kind-e2e)  E2E_TEST_ARGS=-run=TestCrossNode...
#   hack/kind.sh down   (make kind-down) leaves the host as it was
# Works offline: Docker from Debian (started here, on private paths, when no
# engine runs), the node image built here when no registry answers
# (hack/kind-image.sh), every binary cached by version in $CACHE.
source "$(dirname "$0")/lib.sh"
source "$REPO/hack/kind-docker.sh"
CACHE=${CACHE:-/var/cache/kube-efvi}
K8S_VERSION=${K8S_VERSION:-1.34.2}
KIND_VERSION=${KIND_VERSION:-v0.30.0}
export CACHE K8S_VERSION KIND_VERSION
CLUSTER=${KIND_CLUSTER:-kube-efvi}
KIND=${KIND:-$CACHE/kind-$KIND_VERSION/kind}
KOUT=$OUT/kind
KK=$KOUT/kubeconfig
FABRIC_NS=efvi-kind-fabric
KIND_VALUES=${KIND_VALUES:-$REPO/e2e/kind/values-kind.yaml}
mkdir -p "$KOUT"

kubectl_bin() {
  if [ -x "$CACHE/k8s-v$K8S_VERSION/bin/kubectl" ]; then echo "$CACHE/k8s-v$K8S_VERSION/bin/kubectl"; else command -v kubectl; fi
}

nodes() { "$KIND" get nodes --name "$CLUSTER" 2>/dev/null | sort; }

dump_kind() {
  [ -s "$KK" ] || return 0
  local k; k=$(kubectl_bin)
  echo "===== nodes" >&2; KUBECONFIG=$KK "$k" get nodes -o wide >&2 || true
  echo "===== pods" >&2; KUBECONFIG=$KK "$k" get pods -A -o wide >&2 || true
  echo "===== events" >&2; KUBECONFIG=$KK "$k" get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -40 >&2 || true
  for p in $(KUBECONFIG=$KK "$k" get pods -n "$NAMESPACE" -o name 2>/dev/null); do
    echo "===== logs $p" >&2; KUBECONFIG=$KK "$k" logs -n "$NAMESPACE" "$p" --all-containers --tail=80 >&2 || true
  done
  for n in $(nodes); do echo "===== kubelet on $n" >&2; docker exec "$n" journalctl -u kubelet --no-pager -n 40 >&2 || true; done
}

up() {
  trap 'rc=$?; [ $rc -eq 0 ] || { echo "kind-up FAILED (rc $rc)" >&2; dump_kind; }' EXIT
  say "docker"
  docker_up
  say "kind $KIND_VERSION, helm, CNI plugins (cached by version in $CACHE)"
  "$REPO/hack/kind-deps.sh" kind >&2
  "$REPO/hack/kind-deps.sh" helm >&2
  HELM=$CACHE/helm-$HELM_VERSION/helm
  say "node image"
  local image; image=$("$REPO/hack/kind-image.sh")
  local K; K=$(kubectl_bin)
  "$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KK" >/dev/null 2>&1 || true
  [ -e /lib/modules ] || touch "$KIND_RUN.lib-modules-created"
  say "kind create cluster $CLUSTER ($image, 2 nodes)"
  "$KIND" create cluster --name "$CLUSTER" --config "$REPO/e2e/kind/kind-config.yaml" --image "$image" --kubeconfig "$KK" --retain=false
  export KUBECONFIG=$KK
  say "pod network: a bridge per node, routes between the nodes' pod CIDRs"
  local n pid ip cidr i=0 specs=() all=()
  for n in $(nodes); do
    for _ in $(seq 1 60); do cidr=$("$K" get node "$n" -o jsonpath='{.spec.podCIDR}'); [ -n "$cidr" ] && break; sleep 1; done
    [ -n "$cidr" ] || { echo "kind-up: node $n has no pod CIDR" >&2; exit 1; }
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$n")
    all+=("$n,$ip,$cidr")
  done
  for a in "${all[@]}"; do
    IFS=, read -r n ip cidr <<<"$a"
    docker exec -i "$n" sh -c 'cat >/etc/cni/net.d/10-kube-efvi-kind.conflist' <<EOF
{"cniVersion": "1.0.0", "name": "kube-efvi-kind", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
    for b in "${all[@]}"; do
      IFS=, read -r n2 ip2 cidr2 <<<"$b"
      [ "$n2" = "$n" ] || docker exec "$n" ip route replace "$cidr2" via "$ip2"
    done
    # bpffs per node: the agent pins its XDP programs and maps there.
    # Shared, as on systemd hosts: the chart mounts it HostToContainer.
    docker exec "$n" sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; mount --make-shared /sys/fs/bpf'
    pid=$(docker inspect -f '{{.State.Pid}}' "$n")
    i=$((i + 1))
    specs+=("$n,$pid,10.210.0.$((10 + i))/24,$cidr")
  done
  # VI pods go to both nodes.
  "$K" taint nodes --all node-role.kubernetes.io/control-plane:NoSchedule- >/dev/null 2>&1 || true
  "$K" wait --for=condition=Ready nodes --all --timeout=120s
  say "fabric: netns $FABRIC_NS, a port efvi0 in each node"
  tools
  "$OUT/e2e/fabric" multi-up "${specs[@]}" | tee "$KOUT/fabric.txt" >&2
  say "images (hack/images.sh, no Docker) -> kind load image-archive"
  make -s build >&2
  "$REPO/hack/images.sh"
  for t in agent example-app; do "$KIND" load image-archive "$OUT/images/$t.tar" --name "$CLUSTER"; done
  local cni=(--set cni.install=false)
  case "${E2E_CNI:-auto}" in
    true) cni=(--set cni.install=true) ;;
    auto) CNI_COMMAND=VERSION bin/efvi-cni </dev/null 2>/dev/null | grep -q supportedVersions && cni=(--set cni.install=true) ;;
  esac
  say "helm install $RELEASE (${cni[*]})"
  "$HELM" upgrade --install "$RELEASE" charts/kube-efvi -n "$NAMESPACE" --create-namespace \
    -f "$E2E_VALUES" -f "$KIND_VALUES" "${cni[@]}" ${HELM_ARGS:-} --wait --timeout 5m
  "$K" -n "$NAMESPACE" rollout status ds --timeout 3m
  say "waiting for every node to advertise efvi.io/efvi0"
  for n in $(nodes); do
    local cap=""
    for _ in $(seq 1 90); do
      cap=$("$K" get node "$n" -o jsonpath='{.status.allocatable.efvi\.io/efvi0}')
      [ -n "$cap" ] && [ "$cap" != 0 ] && break; sleep 1
    done
    [ -n "$cap" ] && [ "$cap" != 0 ] || { echo "kind-up: node $n does not advertise efvi.io/efvi0" >&2; exit 1; }
    echo "node $n: efvi.io/efvi0=$cap" >&2
  done
  "$K" get nodes -o wide >&2
  say "kind-up done: export KUBECONFIG=$KK"
}

e2e() {
  [ -s "$KK" ] || { echo "kind-e2e: no cluster ($KK missing): run 'make kind-up' first" >&2; exit 1; }
  docker_up >/dev/null 2>&1 || true
  export KUBECONFIG=$KK
  local macs="" n
  # NAME=MAC of each node's port, for the VI pinger's next hop.
  for n in $(nodes); do macs+="${macs:+,}$n=$(docker exec "$n" cat /sys/class/net/efvi0/address)"; done
  export E2E_PORT_MACS=$macs E2E_FABRIC_NS=$FABRIC_NS E2E_AGENT_NAMESPACE=$NAMESPACE E2E_EFLATENCY=$REPO/bin/eflatency
  export E2E_NODE=${E2E_NODE:-$CLUSTER-worker}
  trap 'rc=$?; [ $rc -eq 0 ] || { echo "kind-e2e FAILED (rc $rc)" >&2; dump_kind; }' EXIT
  go test -tags e2e -count=1 -timeout 30m -v ${E2E_TEST_ARGS:-} ./e2e/
}

down() {
  if [ -S "$KIND_DOCKER_SOCK" ] || [ -n "${DOCKER_HOST:-}" ] || [ -S /var/run/docker.sock ]; then
    [ -S "$KIND_DOCKER_SOCK" ] && export DOCKER_HOST=unix://$KIND_DOCKER_SOCK
    [ -x "$KIND" ] && "$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KK" >&2 2>&1 || true
    docker network rm kind >/dev/null 2>&1 || true
  fi
  [ -x "$OUT/e2e/fabric" ] || tools
  "$OUT/e2e/fabric" multi-down
  docker_down
  rm -rf "$KOUT"
  # kind bind-mounts /lib/modules into the nodes; Docker creates the
  # directory when the host has none.
  if [ -e "$KIND_RUN.lib-modules-created" ]; then rmdir /lib/modules 2>/dev/null || true; rm -f "$KIND_RUN.lib-modules-created"; fi
  leftovers
}

# leftovers prints what of ours is still on the host (nothing, normally).
leftovers() {
  local bad=0
  ip netns list | grep -q "^$FABRIC_NS\b" && { echo "left: netns $FABRIC_NS" >&2; bad=1; }
  ip -br link | grep -E '^(br-|docker0|veth)' && { echo "left: links above" >&2; bad=1; }
  iptables-save 2>/dev/null | grep -iE 'docker|kind' && { echo "left: iptables rules above" >&2; bad=1; }
  grep -E " ($KIND_RUN|$KIND_DATA)" /proc/self/mountinfo && { echo "left: mounts above" >&2; bad=1; }
  [ -e "$KIND_RUN" ] || [ -e "$KIND_DATA" ] && { echo "left: $KIND_RUN or $KIND_DATA" >&2; bad=1; }
  pgrep -f "$KIND_RUN/" >/dev/null && { echo "left: processes on $KIND_RUN" >&2; bad=1; }
  [ $bad -eq 0 ] && echo "kind-down: host clean (no netns, bridges, veths, iptables rules, mounts, processes of ours)" >&2
  return $bad
}

case "${1:-}" in
  up) up ;; test) e2e ;; down) down ;; leftovers) leftovers ;;
  *) echo "usage: $0 up|test|down|leftovers" >&2; exit 2 ;;
esac
