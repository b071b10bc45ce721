#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (run as root) for building and testing the shim. Idempotent: re-running only
# does what is missing (pip re-checks the venv, which is quick).
#
#  1. Debian packages: containerd + runc (the 1.6 daemon and native containers), busybox-static (test rootfs),
#     wabt (wat2wasm for test guests), gcc + libc6-dev (static pause binary for CRI: registry.k8s.io is
#     unreachable), iproute2 (CNI bridge cleanup), curl + wrk (HTTP checks and benchmarks), docker-registry (local
#     registry on 127.0.0.1), containernetworking-plugins (CNI plugins in /usr/lib/cni), python3-venv (to create
#     the venv), debian-archive-keyring (verifies the trixie/sid lists in install_containerd.sh), iptables +
#     conntrack (kube-proxy) and openssl (the test cluster's certificates, scripts/kube_cluster.py).
#  2. The project venv at <repo>/.venv with `pip install -e '<repo>[dev]'`, and the shim's bytecode compiled.
#  3. containerd 1.7 and 2.1 via scripts/install_containerd.sh.
#  4. The toolchains that build the real Spin HTTP test apps (Spin Python SDK, componentize-py, Spin JS
#     build-tools) and the reference `wasmtime serve`, via scripts/install_app_toolchains.sh.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="$REPO_ROOT/.venv"
APT_PACKAGES=(
    containerd runc busybox-static wabt gcc libc6-dev iproute2 curl wrk docker-registry
    containernetworking-plugins python3-venv debian-archive-keyring ca-certificates libseccomp2
    iptables conntrack openssl redis-server postgresql mariadb-server mosquitto
    patchelf binutils  # scripts/build_bundle.py: the bundled interpreter's rpath, its debug sections stripped
)

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

missing_packages() {
    local package
    for package in "${APT_PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null)" == "install ok installed" ]] \
            || printf '%s\n' "$package"
    done
}

# Package postinsts (docker-registry, containerd) try to start their services. Without systemd that would run
# the init scripts and leave a registry on :5000 and a containerd on the system socket. A policy-rc.d that says
# 101 ("action forbidden") is the Debian way to prevent it; we add one only for the install if none exists.
POLICY_RC=/usr/sbin/policy-rc.d
REMOVE_POLICY_RC=0
forbid_service_starts() {
    if [[ ! -e "$POLICY_RC" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC"
        chmod 755 "$POLICY_RC"
        REMOVE_POLICY_RC=1
    fi
}
restore_service_starts() {
    if ((REMOVE_POLICY_RC)); then
        rm -f "$POLICY_RC"
    fi
}

install_apt_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        log "Debian packages: all present"
        return
    fi
    log "Debian packages to install: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get -qq update || die "apt-get update failed"
    forbid_service_starts
    trap restore_service_starts EXIT
    apt-get install -y -qq -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
    restore_service_starts
    trap - EXIT
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) || die "still missing after install: ${missing[*]}"
    log "Debian packages installed"
}

# The venv needs python >= 3.11 (pyproject's requires-python); prefer the caller's python3, else Debian's.
pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 /usr/bin/python3; do
        [[ -n "$candidate" ]] || continue
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            printf '%s\n' "$candidate"
            return
        fi
    done
    die "no python3 >= 3.11 with the venv module found"
}

setup_venv() {
    if [[ ! -x "$VENV_DIR/bin/python" ]]; then
        local python
        python=$(pick_python)
        log "creating venv $VENV_DIR with $python"
        "$python" -m venv "$VENV_DIR" || die "python -m venv failed"
    else
        log "venv $VENV_DIR exists"
    fi
    # editable_mode=compat: a plain path in a .pth file. The default mode installs an import finder that site.py
    # loads at every interpreter start (pathlib, re, importlib.util...: ~20 ms of each `start`, -X importtime).
    log "pip install -e '${REPO_ROOT}[dev]' (editable_mode=compat)"
    "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -e "${REPO_ROOT}[dev]" \
        --config-settings editable_mode=compat || die "pip install failed"
    # An editable install has no bytecode, and inside a task's sandbox the source tree is bound read-only: without
    # this every instance process would compile each module it imports after the pivot from source.
    log "compiling the shim's bytecode"
    "$VENV_DIR/bin/python" -m compileall -q -j 0 "$REPO_ROOT"/{oci,proto,runtime,shim} >/dev/null \
        || die "compileall failed"
}

main() {
    [[ $(id -u) -eq 0 ]] || die "run as root"
    install_apt_packages
    setup_venv
    log "containerd 1.7 / 2.1"
    "$REPO_ROOT/scripts/install_containerd.sh"
    log "app toolchains"
    bash "$REPO_ROOT/scripts/install_app_toolchains.sh"
    log "done: containerd $(containerd --version | awk '{print $3}') (system), runc $(runc --version | awk 'NR==1{print $3}'), venv $("$VENV_DIR/bin/python" --version)"
}

main "$@"
