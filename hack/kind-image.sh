#!/usr/bin/env bash
# The kind node image for Kubernetes v$K8S_VERSION, in the Docker engine
# DOCKER_HOST names. In order of preference:
#   1. already in the engine;
#   2. cached by version as a tarball in $CACHE/kind (docker load);
#   3. kind's published kindest/node:v$K8S_VERSION, when a registry answers;
#   4. built here, with no registry (what kind-offline machines need):
#      - a Debian base root file system (debootstrap; systemd, containerd,
#        runc, iptables...) plus the files kind's own base image ships
#        (from the kind Go module: entrypoint, systemd units, containerd
#        config), imported into Docker;
#      - the images kubeadm needs (kube-apiserver, -controller-manager,
#        -scheduler, -proxy, etcd, coredns, pause) made from the binaries
#        hack/kind-deps.sh built, imported into the node's containerd;
#      - kubeadm, kubelet, kubectl copied in; `docker commit`.
#   KIND_NODE_IMAGE (printed on stdout) is what `kind create --image` gets.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CACHE:-/var/cache/kube-efvi}
K8S_VERSION=${K8S_VERSION:-1.34.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.5}
COREDNS_VERSION=${COREDNS_VERSION:-1.12.1}
KIND_VERSION=${KIND_VERSION:-v0.30.0}
CNI_VERSION=${CNI_VERSION:-v1.9.1}
SUITE=${SUITE:-bookworm}
# The Debian mirror the host's apt uses (the node's debootstrap reads the same).
MIRROR=${MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | awk '{print $2}' | head -n1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
LOCAL_IMAGE=kube-efvi/kind-node:v$K8S_VERSION-kind$KIND_VERSION
PUBLISHED_IMAGE=${KIND_PUBLISHED_IMAGE:-kindest/node:v$K8S_VERSION}
KC=$CACHE/kind
mkdir -p "$KC"
t0=$SECONDS
say() { printf '[%4ss] kind-image: %s\n' "$((SECONDS - t0))" "$*" >&2; }

have() { docker image inspect "$1" >/dev/null 2>&1; }

if have "$LOCAL_IMAGE"; then say "$LOCAL_IMAGE is in the engine"; echo "$LOCAL_IMAGE"; exit 0; fi
if have "$PUBLISHED_IMAGE"; then say "$PUBLISHED_IMAGE is in the engine"; echo "$PUBLISHED_IMAGE"; exit 0; fi
node_tar=$KC/node-v$K8S_VERSION-kind$KIND_VERSION.tar
if [ -s "$node_tar" ]; then
  say "loading the cached node image $node_tar"
  docker load -i "$node_tar" >/dev/null
  echo "$LOCAL_IMAGE"; exit 0
fi
if [ "${KIND_PULL:-auto}" != never ] && timeout 60 docker pull -q "$PUBLISHED_IMAGE" >/dev/null 2>&1; then
  say "pulled $PUBLISHED_IMAGE"; echo "$PUBLISHED_IMAGE"; exit 0
fi
say "no registry answers for $PUBLISHED_IMAGE: building $LOCAL_IMAGE here"

bin=$CACHE/k8s-v$K8S_VERSION/bin
"$REPO/hack/kind-deps.sh" cni >&2
kindfiles=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/images/base/files
[ -d "$kindfiles" ] || { echo "kind-image: no $kindfiles" >&2; exit 1; }

# 1. Base image.
BASE_IMAGE=kube-efvi/kind-base:$SUITE-kind$KIND_VERSION
base_tar=$KC/base-$SUITE-kind$KIND_VERSION.rootfs.tar
if ! have "$BASE_IMAGE"; then
  if [ ! -s "$base_tar" ]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    root=$KC/rootfs.tmp
    if [ ! -e "$root/.efvi-debootstrap-ok" ]; then
      rm -rf "$root"
      say "debootstrap $SUITE from $MIRROR (~1-2 min)"
      debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,jq,procps,containerd,runc \
        "$SUITE" "$root" "$MIRROR" >"$KC/debootstrap.log" 2>&1 || { tail -20 "$KC/debootstrap.log" >&2; exit 1; }
      touch "$root/.efvi-debootstrap-ok"
    fi
    rm -f "$root/.efvi-debootstrap-ok"
    # What kind's images/base/Dockerfile does, on Debian's packages.
    cp -a "$kindfiles/usr/local/bin/." "$root/usr/local/bin/"; chmod 755 "$root"/usr/local/bin/*
    mkdir -p "$root/kind" "$root/etc/containerd" "$root/etc/systemd/system/kubelet.service.d" "$root/etc/kubernetes/manifests" "$root/opt/cni/bin"
    cp -a "$kindfiles/kind/." "$root/kind/"; chmod 755 "$root/kind/bin" "$root"/kind/bin/*
    for d in etc/containerd etc/default etc/sysctl.d etc/systemd/system etc/systemd/system/kubelet.service.d; do
      find "$kindfiles/$d" -maxdepth 1 -type f -exec install -m 644 {} "$root/$d/" \;
    done
    install -m 644 "$kindfiles/etc/crictl.yaml" "$root/etc/crictl.yaml"
    # Debian installs containerd in /usr/bin, CNI plugins in /usr/lib/cni.
    ln -sf /usr/bin/containerd "$root/usr/local/bin/containerd"
    for p in bridge host-local loopback portmap; do install -m 755 "$CACHE/cni-plugins-$CNI_VERSION/$p" "$root/opt/cni/bin/"; done
    # containerd 1.6 has no fuse-overlayfs proxy here.
    sed -i '/^\[proxy_plugins\]/,/^  address/d' "$root/etc/containerd/config.toml"
    ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer|length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
      | jq 'del(.process.rlimits)' >"$root/etc/containerd/cri-base.json"
    find "$root/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
    rm -f "$root"/lib/systemd/system/multi-user.target.wants/* "$root"/etc/systemd/system/*.wants/* \
      "$root"/lib/systemd/system/local-fs.target.wants/* "$root"/lib/systemd/system/sockets.target.wants/*udev* \
      "$root"/lib/systemd/system/sockets.target.wants/*initctl* "$root"/lib/systemd/system/basic.target.wants/*
    echo "ReadKMsg=no" >>"$root/etc/systemd/journald.conf"
    chroot "$root" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
    chroot "$root" systemctl mask systemd-binfmt.service >/dev/null 2>&1
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
    rm -rf "$root"
  fi
  say "docker import $BASE_IMAGE"
  # (docker import takes no STOPSIGNAL; kind removes nodes with rm -f)
  docker import -c 'ENV container=docker' \
    -c 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' "$base_tar" "$BASE_IMAGE" >/dev/null
fi

[ "${KIND_IMAGE_STAGE:-}" = base ] && { say "base image $BASE_IMAGE ready (KIND_IMAGE_STAGE=base)"; exit 0; }
"$REPO/hack/kind-deps.sh" all >&2

# 2. Images kubeadm needs, as docker-archive tarballs.
imgs=$KC/images-v$K8S_VERSION; mkdir -p "$imgs"
mk=$REPO/out/e2e/mkimage
mkdir -p "$REPO/out/e2e"; (cd "$REPO" && CGO_ENABLED=0 go build -o "$mk" ./internal/image/cmd/mkimage)
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$REPO/out/e2e/pause" ./internal/image/cmd/pause)
R=registry.k8s.io
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  [ -s "$imgs/$c.tar" ] || "$mk" --ref "$R/$c:v$K8S_VERSION" --out "$imgs/$c.tar" --entrypoint "/usr/local/bin/$c" "$bin/$c:/usr/local/bin/"
done
[ -s "$imgs/etcd.tar" ] || "$mk" --ref "$R/etcd:$ETCD_VERSION-0" --out "$imgs/etcd.tar" --entrypoint /usr/local/bin/etcd "$CACHE/etcd-v$ETCD_VERSION/etcd:/usr/local/bin/"
[ -s "$imgs/coredns.tar" ] || "$mk" --ref "$R/coredns/coredns:v$COREDNS_VERSION" --out "$imgs/coredns.tar" --entrypoint /coredns "$CACHE/coredns-v$COREDNS_VERSION/coredns:/coredns"
for p in 3.10.1 3.10; do
  [ -s "$imgs/pause-$p.tar" ] || "$mk" --ref "$R/pause:$p" --out "$imgs/pause-$p.tar" --entrypoint /pause "$REPO/out/e2e/pause:/pause"
done
# kube-proxy runs iptables: on the Debian base.
if [ ! -s "$imgs/kube-proxy.tar" ]; then
  id=$(docker create "$BASE_IMAGE")
  docker cp "$bin/kube-proxy" "$id:/usr/local/bin/kube-proxy"
  docker commit -c 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]' -c 'CMD []' "$id" "$R/kube-proxy:v$K8S_VERSION" >/dev/null
  docker rm "$id" >/dev/null
  docker save -o "$imgs/kube-proxy.tar" "$R/kube-proxy:v$K8S_VERSION"
  docker rmi "$R/kube-proxy:v$K8S_VERSION" >/dev/null
fi

# 3. The node: the base, Kubernetes binaries, the images in its containerd.
say "node image: kubeadm/kubelet/kubectl + $(ls "$imgs" | wc -l) images into $BASE_IMAGE"
id=$(docker run -d --privileged --entrypoint /bin/sh "$BASE_IMAGE" -c 'containerd >/var/log/containerd-build.log 2>&1 & echo $! >/run/containerd-build.pid; sleep infinity')
trap 'docker rm -f "$id" >/dev/null 2>&1 || true' EXIT
for b in kubeadm kubelet kubectl; do docker cp "$bin/$b" "$id:/usr/bin/$b"; done
echo "v$K8S_VERSION" | docker exec -i "$id" sh -c 'cat >/kind/version'
docker exec "$id" sh -c 'for i in $(seq 1 50); do ctr version >/dev/null 2>&1 && exit 0; sleep 0.2; done; cat /var/log/containerd-build.log; exit 1'
for f in "$imgs"/*.tar; do
  docker exec -i "$id" ctr -n k8s.io images import --all-platforms - <"$f" >/dev/null
done
docker exec "$id" ctr -n k8s.io images ls -q >&2
docker exec "$id" sh -c 'kill $(cat /run/containerd-build.pid); sleep 1; rm -f /var/log/containerd-build.log /run/containerd-build.pid'
docker commit -c 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' -c 'CMD []' "$id" "$LOCAL_IMAGE" >/dev/null
docker rm -f "$id" >/dev/null; trap - EXIT
say "saving $LOCAL_IMAGE to $node_tar (the warm-run cache)"
docker save -o "$node_tar.tmp" "$LOCAL_IMAGE" && mv "$node_tar.tmp" "$node_tar"
echo "$LOCAL_IMAGE"
