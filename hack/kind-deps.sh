#!/usr/bin/env bash
# Build, once per version, what a kind cluster needs when no image registry
# is reachable, into $CACHE (default /var/cache/kube-efvi, shared with the
# host harness in e2e/cluster, which uses the same k8s-v<version>/bin):
#   k8s-v$K8S_VERSION/bin   kubeadm kubelet kubectl kube-apiserver
#                           kube-controller-manager kube-scheduler kube-proxy
#   etcd-v$ETCD_VERSION/etcd, coredns-v$COREDNS_VERSION/coredns,
#   kind-$KIND_VERSION/kind, cni-plugins-$CNI_VERSION/{bridge,host-local,loopback,portmap}
#   (the host harness's layout), helm-$HELM_VERSION/helm
# Everything comes from the Go module proxy. Cold: ~20 min on 2 busy cores;
# warm: seconds (each part is skipped when its binaries report the version).
#   hack/kind-deps.sh [all|k8s|etcd|coredns|kind]
set -euo pipefail
CACHE=${CACHE:-/var/cache/kube-efvi}
K8S_VERSION=${K8S_VERSION:-1.34.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.5}
COREDNS_VERSION=${COREDNS_VERSION:-1.12.1}
KIND_VERSION=${KIND_VERSION:-v0.30.0}
CNI_VERSION=${CNI_VERSION:-v1.9.1}
HELM_VERSION=${HELM_VERSION:-v3.16.4}
export GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0
t0=$SECONDS
say() { printf '[%4ss] kind-deps: %s\n' "$((SECONDS - t0))" "$*" >&2; }

k8s_components=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)

# k8s_stale: the components whose cached binary is missing or another version.
k8s_stale() {
  local bin=$CACHE/k8s-v$K8S_VERSION/bin n
  for n in "${k8s_components[@]}"; do
    case $n in
      kubectl) "$bin/kubectl" version --client 2>/dev/null | grep -q "Client Version: v$K8S_VERSION$" || echo "$n" ;;
      kubeadm) "$bin/kubeadm" version -o short 2>/dev/null | grep -qx "v$K8S_VERSION" || echo "$n" ;;
      *) "$bin/$n" --version 2>/dev/null | grep -qx "Kubernetes v$K8S_VERSION" || echo "$n" ;;
    esac
  done
}

# versionflags PKG... : the -X flags Kubernetes' own build sets.
versionflags() {
  local v=$1 minor p out=""; shift; minor=$(cut -d. -f2 <<<"$v")
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    out+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$out"
}

build_k8s() {
  # The host harness (e2e/cluster) caches five of these in the same place.
  local stale; stale=$(k8s_stale)
  [ -z "$stale" ] && { say "kubernetes v$K8S_VERSION cached in $CACHE/k8s-v$K8S_VERSION/bin"; return; }
  local dir src=$CACHE/k8s-v$K8S_VERSION/src-kind m
  say "kubernetes v$K8S_VERSION: source from the module proxy"
  dir=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$dir" ] || { echo "kind-deps: k8s.io/kubernetes@v$K8S_VERSION is not on the module proxy (every staging module must be: 1.31.0, 1.32.2, 1.34.x are)" >&2; exit 1; }
  rm -rf "$src"; mkdir -p "$(dirname "$src")"; cp -r "$dir" "$src"; chmod -R u+w "$src"
  rm -rf "$src/go.work" "$src/go.work.sum" "$src/vendor"
  # The module zip has no staging/: point each ./staging replace at k8s.io/X@v0.<minor>.<patch>.
  for m in $(sed -n '/^replace (/,/^)/p' "$src/go.mod" | awk '/=> .\/staging/{print $1}'); do
    (cd "$src" && go mod edit "-replace=$m=$m@v0.${K8S_VERSION#1.}")
  done
  (cd "$src" && go mod download)
  say "kubernetes v$K8S_VERSION: building" $stale "(cold, all seven: ~16 min on 2 cores)"
  mkdir -p "$CACHE/k8s-v$K8S_VERSION/bin"
  local pkgs=(); for m in $stale; do pkgs+=("./cmd/$m"); done
  (cd "$src" && go build -trimpath -ldflags "-s -w $(versionflags "$K8S_VERSION")" -o "$CACHE/k8s-v$K8S_VERSION/bin/" "${pkgs[@]}")
  rm -rf "$src"
  [ -z "$(k8s_stale)" ] || { echo "kind-deps: built binaries do not report v$K8S_VERSION" >&2; exit 1; }
}

build_etcd() {
  local out=$CACHE/etcd-v$ETCD_VERSION
  "$out/etcd" --version 2>/dev/null | grep -q "etcd Version: $ETCD_VERSION$" && { say "etcd $ETCD_VERSION cached"; return; }
  say "etcd $ETCD_VERSION: building (cold: ~1-2 min)"
  local w; w=$(mktemp -d); mkdir -p "$out"
  # A wrapper main around etcdmain: the root module's replaces stop `go install`.
  cat > "$w/main.go" <<'G'
// Command etcd is etcd's own main (go.etcd.io/etcd/server/v3/etcdmain), built
// from a wrapper module because the root module's replace directives stop
// `go install`.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
G
  printf 'module efvi.local/etcd\n\ngo 1.24\n' > "$w/go.mod"
  (cd "$w" && go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" "go.etcd.io/etcd/api/v3@v$ETCD_VERSION" "go.etcd.io/etcd/client/pkg/v3@v$ETCD_VERSION" "go.etcd.io/etcd/client/v3@v$ETCD_VERSION" "go.etcd.io/etcd/pkg/v3@v$ETCD_VERSION" >/dev/null 2>&1 && go mod tidy >/dev/null && \
    go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION" -o "$out/etcd" .)
  rm -rf "$w"
}

build_coredns() {
  local out=$CACHE/coredns-v$COREDNS_VERSION
  "$out/coredns" -version 2>/dev/null | grep -q "CoreDNS-$COREDNS_VERSION" && { say "coredns $COREDNS_VERSION cached"; return; }
  say "coredns $COREDNS_VERSION: building (cold: ~7 min)"
  mkdir -p "$out"
  GOBIN=$out go install -trimpath -ldflags '-s -w' "github.com/coredns/coredns@v$COREDNS_VERSION"
}

build_kind() {
  local out=$CACHE/kind-$KIND_VERSION
  "$out/kind" version 2>/dev/null | grep -q "kind $KIND_VERSION " && { say "kind $KIND_VERSION cached"; return; }
  say "kind $KIND_VERSION: building"
  mkdir -p "$out"
  GOBIN=$out go install -trimpath -ldflags '-s -w' "sigs.k8s.io/kind@$KIND_VERSION"
}

build_cni() {
  local out=$CACHE/cni-plugins-$CNI_VERSION p pkgs=()
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    [ -x "$out/${p#*/}" ] || pkgs+=("github.com/containernetworking/plugins/plugins/$p@$CNI_VERSION")
  done
  [ ${#pkgs[@]} -eq 0 ] && { say "cni plugins $CNI_VERSION cached"; return; }
  say "cni plugins $CNI_VERSION: building"
  mkdir -p "$out"; GOBIN=$out go install -trimpath -ldflags '-s -w' "${pkgs[@]}"
}

build_helm() {
  local out=$CACHE/helm-$HELM_VERSION
  "$out/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION" && { say "helm $HELM_VERSION cached"; return; }
  say "helm $HELM_VERSION: building (cold: ~2-4 min)"
  mkdir -p "$out"; GOBIN=$out go install -trimpath -ldflags '-s -w' "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

# One build of a thing at a time (CI and a developer may overlap).
mkdir -p "$CACHE"
exec {lockfd}>"$CACHE/.kind-deps.lock"
flock "$lockfd"

case "${1:-all}" in
  all) build_kind; build_cni; build_helm; build_etcd; build_coredns; build_k8s ;;
  k8s) build_k8s ;; etcd) build_etcd ;; coredns) build_coredns ;; kind) build_kind ;; cni) build_cni ;; helm) build_helm ;;
  *) echo "usage: $0 [all|k8s|etcd|coredns|kind|cni|helm]" >&2; exit 2 ;;
esac
say "done"
