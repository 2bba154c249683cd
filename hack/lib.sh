# Shared settings of the e2e/demo scripts (sourced, not run).
# Everything is overridable from the environment.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/out}
TOOLS=${TOOLS:-$REPO/bin/tools}
HELM=${HELM:-$TOOLS/helm}
HELM_VERSION=${HELM_VERSION:-v3.16.4}
E2E_WORK=${E2E_WORK:-/tmp/kube-efvi-e2e}
RELEASE=${RELEASE:-kube-efvi}
NAMESPACE=${NAMESPACE:-kube-efvi}
E2E_VALUES=${E2E_VALUES:-$REPO/e2e/values-e2e.yaml}
T0=${T0:-$SECONDS}
export GOFLAGS=${GOFLAGS:--buildvcs=false}

say() { printf '\n[%4ss] === %s\n' "$((SECONDS - T0))" "$*" >&2; }

# e2e tools, built once per call (the Go build cache makes this quick).
tools() {
  mkdir -p "$OUT/e2e"
  CGO_ENABLED=0 go build -o "$OUT/e2e/cluster" ./e2e/cmd/cluster
  CGO_ENABLED=0 go build -o "$OUT/e2e/fabric" ./e2e/cmd/fabric
}

ensure_helm() {
  if [ ! -x "$HELM" ]; then
    say "installing helm $HELM_VERSION into $TOOLS (go install, ~1-2 min cold)"
    GOBIN=$TOOLS CGO_ENABLED=0 GOFLAGS=-mod=mod go install -ldflags '-s -w' "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
}

cluster_env() {
  eval "$("$OUT/e2e/cluster" --work-dir "$E2E_WORK" env)"
  export KUBECONFIG KUBECTL E2E_LOG_DIR E2E_NODE
}

# On failure: the agent's, kubelet's and the pods' logs, for CI.
dump_logs() {
  [ -n "${KUBECONFIG:-}" ] && [ -x "${KUBECTL:-}" ] || return 0
  echo "===== pods" >&2; "$KUBECTL" get pods -A -o wide >&2 || true
  echo "===== events" >&2; "$KUBECTL" get events -A --sort-by=.lastTimestamp 2>/dev/null | tail -40 >&2 || true
  for p in $("$KUBECTL" get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}' 2>/dev/null); do
    echo "===== logs $p" >&2
    "$KUBECTL" logs -n "${p%%/*}" "${p#*/}" --all-containers --tail=100 >&2 || true
  done
  for f in kubelet containerd kube-apiserver; do
    echo "===== $E2E_LOG_DIR/$f.log (tail)" >&2; tail -60 "$E2E_LOG_DIR/$f.log" >&2 || true
  done
}
