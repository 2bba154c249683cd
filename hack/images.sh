#!/usr/bin/env bash
# make images: build the images as docker-archive tarballs in out/images,
# without Docker (internal/image). Static binaries come from bin/ (make build).
#   agent        efvi-agent, efvi-cni, efvi-install
#   example-app  busybox (shell) + SDK tools listed in EXAMPLE_TOOLS
#   pause        the sandbox image of the e2e cluster
source "$(dirname "$0")/lib.sh"
TAG=${TAG:-dev}
EXAMPLE_TOOLS=${EXAMPLE_TOOLS:-eflatency efsink efsend}   # SDK tools for the example-app image: one word each, from bin/<tool>
BUSYBOX=${BUSYBOX:-/bin/busybox}
mkdir -p "$OUT/images" "$OUT/e2e"
CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/efvi-install ./cmd/efvi-install
CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$OUT/e2e/pause" ./internal/image/cmd/pause
CGO_ENABLED=0 go build -o "$OUT/e2e/mkimage" ./internal/image/cmd/mkimage
for b in efvi-agent efvi-cni efvi-install $EXAMPLE_TOOLS; do
  [ -x "bin/$b" ] || { echo "images: bin/$b is missing: run 'make build' first" >&2; exit 1; }
done
mk=$OUT/e2e/mkimage
$mk --ref "localhost/kube-efvi/agent:$TAG" --out "$OUT/images/agent.tar" --entrypoint /usr/bin/efvi-agent \
  bin/efvi-agent:/usr/bin/ bin/efvi-cni:/usr/bin/ bin/efvi-install:/usr/bin/
args=()   # flags first, then SRC:DST files
if [ -x "$BUSYBOX" ]; then
  args+=(--busybox "$BUSYBOX")
else
  echo "images: $BUSYBOX not found (apt-get install busybox-static): the example-app image gets no shell" >&2
fi
for t in $EXAMPLE_TOOLS; do args+=("bin/$t:/usr/bin/"); done
$mk --ref "localhost/kube-efvi/example-app:$TAG" --out "$OUT/images/example-app.tar" --cmd "/bin/sh" "${args[@]}"
$mk --ref "localhost/kube-efvi/pause:$TAG" --out "$OUT/images/pause.tar" --entrypoint /pause "$OUT/e2e/pause:/pause"
