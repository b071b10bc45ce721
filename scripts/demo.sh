#!/usr/bin/env bash
# The main job, from nothing: install everything (scripts/setup.sh), build a sample Spin HTTP app with the
# Spin Python SDK (scripts/build_http_apps.py), start a private containerd with this shim on its PATH, import
# the app as an image (spin.toml + wasm at the root, command "/"), serve it with
# `ctr run -d --net-host --runtime io.containerd.spin.v2` on $DEMO_ADDR, and ask it with curl. Then stop
# the task and containerd and clean up. Needs root.
#   scripts/demo.sh [--version 1.6|1.7|2.1] [--keep]   (--keep leaves the app and containerd running)
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
"$PY" "$REPO_ROOT/scripts/build_http_apps.py" >/dev/null
DEMO_ADDR="${DEMO_ADDR:-127.0.0.1:3000}"

WORK=/tmp/spin-shim-demo
if [[ -f "$WORK/containerd/instance.json" ]]; then
    "$PY" "$REPO_ROOT/scripts/private_containerd.py" stop --workdir "$WORK/containerd" >/dev/null || true
fi
rm -rf "$WORK" && mkdir -p "$WORK/shim-bin"
ln -s "$REPO_ROOT/.venv/bin/containerd-shim-spin-v2" "$WORK/shim-bin/containerd-shim-spin-v2"

stop() {
    if [[ $KEEP -eq 0 ]]; then
        "$PY" "$REPO_ROOT/scripts/private_containerd.py" stop --workdir "$WORK/containerd" >/dev/null
        # The shim's first start leaves a warm fork server for the node's next pod; the demo stops the one it made.
        "$PY" "$REPO_ROOT/scripts/fork_servers.py" stop-new "$WORK/fork-servers-before"
    fi
}
"$PY" "$REPO_ROOT/scripts/fork_servers.py" list > "$WORK/fork-servers-before"
SPIN_SHIM_CACHE_DIR="$WORK/cache" "$PY" "$REPO_ROOT/scripts/private_containerd.py" start \
    --version "$VERSION" --workdir "$WORK/containerd" --shim-dir "$WORK/shim-bin" > "$WORK/env.sh"
trap stop EXIT
# shellcheck disable=SC1091
source "$WORK/env.sh"

APP="$REPO_ROOT/tests/apps/build/py-spin"
IMAGE=docker.io/library/spin-py-demo:latest
"$PY" "$REPO_ROOT/scripts/mkoci.py" "$APP" "$WORK/app.tar" "$IMAGE" --os wasip1 --arch wasm \
    --entrypoint '["/"]' >/dev/null
"$CTR" --address "$CONTAINERD_ADDRESS" images import --all-platforms "$WORK/app.tar" >/dev/null

ctr_() { "$CTR" --address "$CONTAINERD_ADDRESS" "$@"; }
stop_app() {
    ctr_ task kill demo >/dev/null 2>&1 || true
    for _ in $(seq 50); do ctr_ task ls | grep -q '^demo .*RUNNING' || break; sleep 0.2; done
    ctr_ task rm -f demo >/dev/null 2>&1 || true
    ctr_ containers rm demo >/dev/null 2>&1 || true
}
if [[ $KEEP -eq 0 ]]; then
    trap 'stop_app; stop' EXIT
fi

echo "+ ctr run -d --net-host --runtime io.containerd.spin.v2 --env SPIN_HTTP_LISTEN_ADDR=$DEMO_ADDR --env SPIN_VARIABLE_API_TOKEN=demo $IMAGE demo /"
ctr_ run -d --net-host --runtime io.containerd.spin.v2 --log-uri "file://$WORK/demo.log" \
    --env "SPIN_HTTP_LISTEN_ADDR=$DEMO_ADDR" --env SPIN_VARIABLE_API_TOKEN=demo "$IMAGE" demo /
for _ in $(seq 300); do  # the first start compiles the 37 MB component (~6 s); later starts load it in ms
    curl -fsS "http://$DEMO_ADDR/.well-known/spin/health" >/dev/null 2>&1 && break
    sleep 0.2
done
for path in /hello "/vars?names=greeting" /counter /counter; do
    echo "+ curl http://$DEMO_ADDR$path"
    curl -sS "http://$DEMO_ADDR$path"
    echo
done
if [[ $KEEP -eq 1 ]]; then
    echo "the app keeps serving on http://$DEMO_ADDR (container log: $WORK/demo.log);"
    echo "containerd $VERSION keeps running: source $WORK/env.sh, then use \$CTR --address \$CONTAINERD_ADDRESS"
fi
