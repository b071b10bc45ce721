#!/bin/sh
# The node installer of containerd-shim-spin-v2: the DaemonSet's init container runs it (daemonset.yaml), in the
# installer image (scripts/build_installer_image.py: busybox, this script, the bundle tarball), with the node's
# root filesystem mounted at $HOST_ROOT and the node's pid namespace (hostPID).
#
# What it does, as runtime-class-manager's node installer does for SpinKube's Rust shim:
#  1. unpacks the bundle into $INSTALL_DIR/<version>-<source hash>/ on the node, unless that exact build is there
#     (a new build gets a new directory: pods running on the old one keep their files, which their shims import
#     lazily; builds no process runs from any more are removed, the newest two are kept);
#  2. runs the bundle's own `containerd-shim-spin-v2 install` *in the node's root* (chroot): it links
#     $SHIM_BIN_DIR/containerd-shim-spin-v2 to that build's entry point and adds the runtime to containerd's config,
#     with the node's containerd, paths and glibc, exactly as an operator running it on the node would;
#  3. if the config changed, gets containerd to read it (containerd reads config.toml only when it starts):
#     CONTAINERD_RESTART=auto (default): `systemctl restart containerd` (k3s: its k3s unit) when the node runs
#       systemd, else SIGTERM to the node's containerd process, for the node's supervisor to start it again
#       (runtime-class-manager does the same without systemd: a signal to containerd, or to PID 1 on k3s);
#     systemctl | signal: that way only; none: print that a restart is needed and do nothing.
#     Running pods survive the restart: their shims outlive containerd, which reconnects to them.
# INSTALLER_ACTION=uninstall runs the bundle's `containerd-shim-spin-v2 uninstall` instead of step 2 (the config
# back as it was before install, the shim's link removed), restarts containerd the same way, and removes the
# builds no process runs from any more (a Spin pod still running keeps its build until the next run).
# A second run (the pod restarted, the DaemonSet rolled) changes nothing and restarts nothing. Every run appends
# what it did to $INSTALL_DIR/installer.log on the node: kubelet keeps only the last run's log of an init
# container, and after the restart it asked for, that is usually a second run that found nothing to do.
set -eu

HOST_ROOT=${HOST_ROOT:-/host}
INSTALL_DIR=${INSTALL_DIR:-/opt/containerd-shim-spin}
CONTAINERD_CONFIG=${CONTAINERD_CONFIG:-auto}
SHIM_BIN_DIR=${SHIM_BIN_DIR:-/usr/local/bin}
RUNTIME_NAME=${RUNTIME_NAME:-spin}
CONTAINERD_RESTART=${CONTAINERD_RESTART:-auto}
INSTALL_ARGS=${INSTALL_ARGS:-}
INSTALLER_ACTION=${INSTALLER_ACTION:-install}
BUNDLE_GLOB=${BUNDLE_GLOB:-/installer/containerd-shim-spin-*.tar.gz}
KEEP_BUILDS=2

case "$INSTALLER_ACTION" in
    install|uninstall) ;;
    *) echo "node-installer: INSTALLER_ACTION=$INSTALLER_ACTION: choose install or uninstall" >&2; exit 1 ;;
esac
[ -d "$HOST_ROOT/proc" ] || { echo "node-installer: the node's root is not mounted at $HOST_ROOT" >&2; exit 1; }
mkdir -p "$HOST_ROOT$INSTALL_DIR"
LOG_FILE=$HOST_ROOT$INSTALL_DIR/installer.log
record() { while IFS= read -r line; do echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $line"; done >> "$LOG_FILE"; }
log() { echo "node-installer: $*"; echo "node-installer: $*" | record; }
die() { echo "node-installer: $*" >&2; echo "node-installer: error: $*" | record; exit 1; }
set -- $BUNDLE_GLOB
[ $# -eq 1 ] && [ -f "$1" ] || die "expected one bundle matching $BUNDLE_GLOB"
BUNDLE=$1

# --- which config, and who restarts containerd -----------------------------------------------------------------
FLAVOUR=containerd
if [ "$CONTAINERD_CONFIG" = auto ]; then
    K3S_DIR=/var/lib/rancher/k3s/agent/etc/containerd
    RKE2_DIR=/var/lib/rancher/rke2/agent/etc/containerd
    if [ -d "$HOST_ROOT$K3S_DIR" ]; then
        FLAVOUR=k3s CONTAINERD_CONFIG=$K3S_DIR/config.toml.tmpl
    elif [ -d "$HOST_ROOT$RKE2_DIR" ]; then
        FLAVOUR=rke2 CONTAINERD_CONFIG=$RKE2_DIR/config.toml.tmpl
    else
        CONTAINERD_CONFIG=/etc/containerd/config.toml
    fi
fi
case "$CONTAINERD_CONFIG" in
    *.toml.tmpl)
        # k3s and rke2 write config.toml anew at every start, from config.toml.tmpl if there is one: the runtime
        # goes into the template. Without one, the template starts as a copy of what k3s rendered last (as
        # runtime-class-manager does), so the node keeps its settings.
        if [ ! -e "$HOST_ROOT$CONTAINERD_CONFIG" ] && [ -f "$HOST_ROOT${CONTAINERD_CONFIG%.tmpl}" ]; then
            cp "$HOST_ROOT${CONTAINERD_CONFIG%.tmpl}" "$HOST_ROOT$CONTAINERD_CONFIG"
            log "created $CONTAINERD_CONFIG from ${CONTAINERD_CONFIG%.tmpl}"
        fi ;;
esac

# Uninstall reverts what install recorded beside the config (shim/install/install_record.py): without a record
# there is nothing of ours on the node (never installed, or a rerun after the uninstall), and nothing to do.
if [ "$INSTALLER_ACTION" = uninstall ] && [ ! -e "$HOST_ROOT$CONTAINERD_CONFIG.spin-install.json" ]; then
    log "no install record beside $CONTAINERD_CONFIG: nothing to uninstall, containerd needs no restart"
    exit 0
fi

# --- 1. the bundle on the node ---------------------------------------------------------------------------------
MANIFEST=$(tar -xzOf "$BUNDLE" containerd-shim-spin/BUNDLE.json)
field() { echo "$MANIFEST" | sed -n "s/^ *\"$1\": *\"\([^\"]*\)\".*/\1/p"; }
BUILD="$(field version)-$(field source_hash)"
[ "$BUILD" != "-" ] || die "$BUNDLE has no BUNDLE.json version and source_hash"
TARGET=$INSTALL_DIR/$BUILD
if [ -f "$HOST_ROOT$TARGET/BUNDLE.json" ] && [ "$(cat "$HOST_ROOT$TARGET/BUNDLE.json")" = "$MANIFEST" ]; then
    log "$TARGET is already this build ($(field glibc_minimum) glibc minimum): unchanged"
else
    STAGING=$HOST_ROOT$INSTALL_DIR/.unpack-$$
    rm -rf "$STAGING" "$HOST_ROOT$TARGET"
    mkdir "$STAGING"
    tar -xzf "$BUNDLE" -C "$STAGING"
    mv "$STAGING/containerd-shim-spin" "$HOST_ROOT$TARGET"
    rmdir "$STAGING"
    log "unpacked $(basename "$BUNDLE") into $TARGET"
fi

# --- 2. the shim's own install (or uninstall), in the node's root -----------------------------------------------
BEFORE=$(cat "$HOST_ROOT$CONTAINERD_CONFIG" 2>/dev/null || echo "(no config)")
if [ "$INSTALLER_ACTION" = install ]; then
    set -- install --config "$CONTAINERD_CONFIG" --bin-dir "$SHIM_BIN_DIR" --runtime-name "$RUNTIME_NAME"
else
    set -- uninstall --config "$CONTAINERD_CONFIG"
    KEEP_BUILDS=0
fi
# shellcheck disable=SC2086
if OUTPUT=$(chroot "$HOST_ROOT" "$TARGET/bin/containerd-shim-spin-v2" "$@" $INSTALL_ARGS 2>&1); then
    echo "$OUTPUT"; echo "$OUTPUT" | record
else
    echo "$OUTPUT" >&2; echo "$OUTPUT" | record
    die "containerd-shim-spin-v2 $1 failed (its message is above); nothing restarted"
fi
AFTER=$(cat "$HOST_ROOT$CONTAINERD_CONFIG" 2>/dev/null || echo "(no config)")

# Builds no process runs from, beyond the newest KEEP_BUILDS (install keeps the one just installed).
in_use() {
    for exe in /proc/[0-9]*/exe; do
        case "$(readlink "$exe" 2>/dev/null)" in "$1"/*) return 0 ;; esac
    done
    return 1
}
ls -1td "$HOST_ROOT$INSTALL_DIR"/*/ 2>/dev/null | tail -n +$((KEEP_BUILDS + 1)) | while read -r dir; do
    old=$(basename "$dir")
    [ "$old" = "$BUILD" ] && [ "$INSTALLER_ACTION" = install ] && continue
    if in_use "$INSTALL_DIR/$old"; then
        log "keeping $INSTALL_DIR/$old: processes run from it"
    else
        rm -rf "${HOST_ROOT:?}$INSTALL_DIR/$old" && log "removed the old build $INSTALL_DIR/$old"
    fi
done

# --- 3. containerd reads the new config ------------------------------------------------------------------------
if [ "$BEFORE" = "$AFTER" ]; then
    log "$CONTAINERD_CONFIG unchanged: containerd needs no restart"
    exit 0
fi

containerd_pid() {
    # The node's containerd: the process named containerd started with this config (or with none, for the
    # default path), in the node's pid namespace (hostPID).
    for dir in /proc/[0-9]*; do
        [ "$(basename "$(readlink "$dir/exe" 2>/dev/null)")" = containerd ] || continue
        args=$(tr '\0' ' ' < "$dir/cmdline" 2>/dev/null) || continue
        case " $args " in
            *" $CONTAINERD_CONFIG "*|*"=$CONTAINERD_CONFIG "*) echo "${dir#/proc/}"; return ;;
            *" --config "*|*" -c "*|*" --config="*) ;;
            *) [ "$CONTAINERD_CONFIG" = /etc/containerd/config.toml ] && { echo "${dir#/proc/}"; return; } ;;
        esac
    done
}

if [ "$CONTAINERD_RESTART" = auto ]; then
    if [ -d "$HOST_ROOT/run/systemd/system" ]; then CONTAINERD_RESTART=systemctl; else CONTAINERD_RESTART=signal; fi
fi
case "$CONTAINERD_RESTART" in
    systemctl)
        case "$FLAVOUR" in
            k3s) UNIT=$(chroot "$HOST_ROOT" systemctl list-units --type service --plain --no-legend 'k3s*' | awk 'NR==1{print $1}') ;;
            rke2) UNIT=$(chroot "$HOST_ROOT" systemctl list-units --type service --plain --no-legend 'rke2*' | awk 'NR==1{print $1}') ;;
            *) UNIT=containerd ;;
        esac
        log "restarting ${UNIT:-containerd} (systemctl) to load $CONTAINERD_CONFIG"
        chroot "$HOST_ROOT" systemctl restart "${UNIT:-containerd}" ;;
    signal)
        if [ "$FLAVOUR" = containerd ]; then PID=$(containerd_pid); else PID=1; fi
        [ -n "$PID" ] || die "no containerd process runs with $CONTAINERD_CONFIG: restart containerd yourself"
        log "sending SIGTERM to containerd (pid $PID, node's pid namespace) to load $CONTAINERD_CONFIG; its supervisor starts it again"
        kill -TERM "$PID" ;;
    none)
        log "$CONTAINERD_CONFIG changed: restart containerd to load it (CONTAINERD_RESTART=none)" ;;
    *) die "CONTAINERD_RESTART=$CONTAINERD_RESTART: choose auto, systemctl, signal or none" ;;
esac
