#!/usr/bin/env bash
# A private Docker engine for the kind e2e, when none runs: containerd and
# dockerd from Debian, every path of theirs under $KIND_RUN and $KIND_DATA,
# so they collide with nothing else on the host (another containerd on
# /run/containerd, the host e2e cluster). No docker0 bridge, no iptables rules,
# no ip_forward change: kind's node containers only talk to each other on
# kind's bridge, and the fabric is a netns of ours. Stopped by pid.
#   hack/kind-docker.sh up     prints `export DOCKER_HOST=...`
#   hack/kind-docker.sh down
#   hack/kind-docker.sh env
# Sourced by hack/kind.sh (functions docker_up / docker_down).
set -euo pipefail
KIND_RUN=${KIND_RUN:-/run/efvi-kind}
KIND_DATA=${KIND_DATA:-/var/lib/efvi-kind}
KIND_DOCKER_SOCK=$KIND_RUN/docker.sock

docker_say() { printf '[kind-docker] %s\n' "$*" >&2; }

# pid_of NAME: the pid recorded for NAME if that process still runs NAME.
pid_of() {
  local f=$KIND_RUN/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] && [ "$(basename "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)")" = "$1" ] || return 1
  echo "$pid"
}

# The VM's capability bounding set may lack CAP_SYS_RESOURCE (bit 24), and
# docker 20.10 asks runc for every capability of a privileged container
# ("unable to apply caps: operation not permitted"). Then dockerd runs
# through a runc wrapper that drops that capability from the spec.
needs_cap_wrapper() {
  local bnd; bnd=$(awk '/^CapBnd:/{print $2}' /proc/self/status)
  (( (0x$bnd >> 24) & 1 )) && return 1 || return 0
}

write_runc_wrapper() {
  local w=$KIND_RUN/runc-no-sys-resource real; real=$(command -v runc)
  cat >"$w" <<EOF
#!/bin/sh
# runc without CAP_SYS_RESOURCE (absent from this machine's bounding set):
# strip it from the bundle's config.json and from --process specs.
strip() { [ -f "\$1" ] && jq 'walk(if type == "array" then map(select(. != "CAP_SYS_RESOURCE")) else . end)' "\$1" >"\$1.efvi" && mv "\$1.efvi" "\$1"; }
prev=""; bundle=""
for a in "\$@"; do
  case "\$prev" in --bundle|-b) bundle=\$a ;; --process|-p) strip "\$a" ;; esac
  case "\$a" in --bundle=*) bundle=\${a#--bundle=} ;; --process=*) strip "\${a#--process=}" ;; esac
  prev=\$a
done
[ -n "\$bundle" ] && strip "\$bundle/config.json"
exec $real "\$@"
EOF
  chmod 755 "$w"
  echo "$w"
}

docker_up() {
  if [ -n "${DOCKER_HOST:-}" ] || { [ -S /var/run/docker.sock ] && docker version >/dev/null 2>&1; }; then
    docker_say "using the running Docker engine (${DOCKER_HOST:-/var/run/docker.sock})"
    return 0
  fi
  export DOCKER_HOST=unix://$KIND_DOCKER_SOCK
  if pid_of dockerd >/dev/null && docker version >/dev/null 2>&1; then
    docker_say "private dockerd already running (pid $(pid_of dockerd))"; return 0
  fi
  for b in dockerd containerd runc jq; do
    command -v $b >/dev/null || { docker_say "installing Debian's docker.io (no service is started)"; apt-get update -qq;
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io jq >/dev/null; break; }
  done
  mkdir -p "$KIND_RUN" "$KIND_DATA"
  cat >"$KIND_RUN/containerd.toml" <<EOF
version = 2
root = "$KIND_DATA/containerd"
state = "$KIND_RUN/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$KIND_RUN/containerd.sock"
[ttrpc]
  address = "$KIND_RUN/containerd.sock.ttrpc"
[debug]
  address = ""
EOF
  setsid containerd --config "$KIND_RUN/containerd.toml" >"$KIND_RUN/containerd.log" 2>&1 </dev/null &
  echo $! >"$KIND_RUN/containerd.pid"
  for _ in $(seq 1 50); do [ -S "$KIND_RUN/containerd.sock" ] && break; sleep 0.2; done
  [ -S "$KIND_RUN/containerd.sock" ] || { tail -20 "$KIND_RUN/containerd.log" >&2; docker_say "containerd did not start"; return 1; }
  local rt=()
  if needs_cap_wrapper; then
    docker_say "CAP_SYS_RESOURCE is not in this machine's bounding set: privileged containers run through a runc wrapper that drops it"
    rt=(--add-runtime "efvi-runc=$(write_runc_wrapper)" --default-runtime efvi-runc)
  fi
  echo '{}' >"$KIND_RUN/daemon.json"
  # dockerd 20.10 writes a trust key to /etc/docker/key.json: remove it at
  # down when it was not there before.
  [ -e /etc/docker/key.json ] || touch "$KIND_RUN/created-etc-docker-key"
  [ -d /etc/docker ] || touch "$KIND_RUN/created-etc-docker"
  setsid dockerd --config-file "$KIND_RUN/daemon.json" --containerd "$KIND_RUN/containerd.sock" \
    --data-root "$KIND_DATA/docker" --exec-root "$KIND_RUN/docker" --pidfile "$KIND_RUN/dockerd.pid" \
    -H "unix://$KIND_DOCKER_SOCK" --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
    --storage-driver overlay2 "${rt[@]}" >"$KIND_RUN/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  docker version >/dev/null 2>&1 || { tail -20 "$KIND_RUN/dockerd.log" >&2; docker_say "dockerd did not start"; return 1; }
  docker_say "private dockerd up (pid $(cat "$KIND_RUN/dockerd.pid"), DOCKER_HOST=$DOCKER_HOST)"
}

stop_pid() { # NAME
  local pid; pid=$(pid_of "$1") || { rm -f "$KIND_RUN/$1.pid"; return 0; }
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { docker_say "$1 (pid $pid) ignores SIGTERM: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; }
  rm -f "$KIND_RUN/$1.pid"
}

# docker_down stops the private engine (if this harness started it) and
# removes its state; the images it held are cached as tarballs elsewhere.
docker_down() {
  [ -d "$KIND_RUN" ] || return 0
  export DOCKER_HOST=unix://$KIND_DOCKER_SOCK
  if pid_of dockerd >/dev/null; then
    # Nothing of ours may outlive the engine.
    local ids; ids=$(docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null 2>&1 || true
    docker network prune -f >/dev/null 2>&1 || true
    docker volume prune -f >/dev/null 2>&1 || true
  fi
  stop_pid dockerd
  stop_pid containerd
  [ -e "$KIND_RUN/created-etc-docker-key" ] && rm -f /etc/docker/key.json
  [ -e "$KIND_RUN/created-etc-docker" ] && rmdir /etc/docker 2>/dev/null
  # Mounts of the engine (overlay layers, netns files), deepest first.
  awk -v a="$KIND_DATA" -v b="$KIND_RUN" '$5 ~ "^"a"/" || $5 ~ "^"b"/" || $5 == b {print $5}' /proc/self/mountinfo | sort -r | \
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$KIND_RUN" "$KIND_DATA"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    up) docker_up; echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}" ;;
    down) docker_down ;;
    env) echo "export DOCKER_HOST=unix://$KIND_DOCKER_SOCK" ;;
    *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
  esac
fi
