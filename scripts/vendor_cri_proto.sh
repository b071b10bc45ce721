#!/usr/bin/env bash
# Vendor the Kubernetes CRI API (k8s.io/cri-api/pkg/apis/runtime/v1/api.proto) into proto/vendor/ from Debian's
# golang-k8s-cri-api-dev (sid). Run once when updating; the result is committed and scripts/gen_proto.py compiles it.
#
# Why this shape: the e2e tests drive containerd's CRI
# plugin the way kubelet does, so they need the CRI stubs; crictl is not packaged, but the CRI proto is, as a Go
# source package. apt runs with the same private config as scripts/install_containerd.sh (sid from the machine's
# own mirror, never /etc/apt), and the deb is only unpacked.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_ROOT="${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}"
APT_PRIVATE="$CACHE_ROOT/apt"
PACKAGE=golang-k8s-cri-api-dev
PROTO_REL=k8s.io/cri-api/pkg/apis/runtime/v1/api.proto
DEST="$REPO_ROOT/proto/vendor/$PROTO_REL"

log() { printf '[vendor_cri_proto] %s\n' "$*"; }
die() { printf '[vendor_cri_proto] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=private_apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/private_apt.sh"

[[ $(id -u) -eq 0 ]] || die "run as root (apt-get needs it)"
exec 9>"$CACHE_ROOT/.install_containerd.lock"  # the same lock as install_containerd.sh: one private apt at a time
flock 9
prepare_private_apt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${APT_OPTS[@]}" -qq download "$PACKAGE") || die "apt-get download $PACKAGE failed"
deb=$(find "$work" -maxdepth 1 -name "${PACKAGE}_*.deb" -print -quit)
[[ -n "$deb" ]] || die "no $PACKAGE deb downloaded"
dpkg-deb -x "$deb" "$work/x"
src="$work/x/usr/share/gocode/src/$PROTO_REL"
[[ -f "$src" ]] || die "$deb has no $PROTO_REL"
mkdir -p "$(dirname "$DEST")"
install -m 644 "$src" "$DEST"
log "vendored $PROTO_REL from $(basename "$deb"); update proto/vendor/SOURCES.md and run scripts/gen_proto.py"
