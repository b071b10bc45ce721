#!/usr/bin/env bash
# The main job, from nothing: install everything (scripts/setup.sh), start a private containerd with
# this shim on its PATH, import a sample Spin app image (spin.toml + wasm, command trigger) and run it
# with `ctr run --runtime io.containerd.spin.v2`, then stop containerd and clean up. Needs root.
#   scripts/demo.sh [--version 1.6|1.7|2.1] [--keep]   (--keep leaves containerd running to play with)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=2.1
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --version) VERSION="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "usage: $0 [--version 1.6|1.7|2.1] [--keep]" >&2; exit 2 ;;
    esac
done

bash "$REPO_ROOT/scripts/setup.sh"
PY="$REPO_ROOT/.venv/bin/python"
"$PY" "$REPO_ROOT/scripts/build_guests.py" >/dev/null

WORK=/tmp/spin-shim-demo
if [[ -f "$WORK/containerd/instance.json" ]]; then
    "$PY" "$REPO_ROOT/scripts/private_containerd.py" stop --workdir "$WORK/containerd" >/dev/null || true
fi
rm -rf "$WORK" && mkdir -p "$WORK/shim-bin"
ln -s "$REPO_ROOT/.venv/bin/containerd-shim-spin-v2" "$WORK/shim-bin/containerd-shim-spin-v2"

stop() {
    if [[ $KEEP -eq 0 ]]; then
        "$PY" "$REPO_ROOT/scripts/private_containerd.py" stop --workdir "$WORK/containerd" >/dev/null
    fi
}
SPIN_SHIM_CACHE_DIR="$WORK/cache" "$PY" "$REPO_ROOT/scripts/private_containerd.py" start \
    --version "$VERSION" --workdir "$WORK/containerd" --shim-dir "$WORK/shim-bin" > "$WORK/env.sh"
trap stop EXIT
# shellcheck disable=SC1091
source "$WORK/env.sh"

APP="$REPO_ROOT/tests/guests/build/apps/command-hello"
IMAGE=docker.io/library/spin-command-hello:demo
"$PY" "$REPO_ROOT/scripts/mkoci.py" "$APP" "$WORK/app.tar" "$IMAGE" --os wasip1 --arch wasm \
    --entrypoint '["/"]' >/dev/null
"$CTR" --address "$CONTAINERD_ADDRESS" images import --all-platforms "$WORK/app.tar" >/dev/null

echo "+ ctr run --rm --runtime io.containerd.spin.v2 $IMAGE demo / hello containerd"
"$CTR" --address "$CONTAINERD_ADDRESS" run --rm --runtime io.containerd.spin.v2 "$IMAGE" demo / hello containerd
if [[ $KEEP -eq 1 ]]; then
    echo "containerd $VERSION keeps running: source $WORK/env.sh, then use \$CTR --address \$CONTAINERD_ADDRESS"
fi
