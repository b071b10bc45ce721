#!/usr/bin/env bash
# Fetch containerd 1.7 (Debian trixie) and 2.1 (Debian sid) as unpacked trees for the e2e tests.
#
# Why this shape:
#  - nothing on PyPI/npm ships containerd, but Debian's archive is reachable and the trixie/sid debs run on
#    bookworm (they need libc6 >= 2.34);
#  - we must not touch /etc/apt (the machine's apt state is shared), so apt runs with a private config whose
#    sources list names the same mirror apt already uses (read from debian.sources, never hard-coded);
#  - the debs are only unpacked (`dpkg-deb -x`), never installed, so the system containerd 1.6 stays intact.
#
# Result: ${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}/containerd/{1.7,2.1}/usr/bin/
#         {containerd,ctr,containerd-shim-runc-v2}, plus a DEB_VERSION file naming the deb that was unpacked.
# Idempotent: a series whose binaries are present and answer --version is skipped.
set -euo pipefail

CACHE_ROOT="${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}"
CONTAINERD_CACHE="$CACHE_ROOT/containerd"
APT_PRIVATE="$CACHE_ROOT/apt"

# The versions the e2e tests were first run with; a newer build of the same series is accepted if these are gone.
declare -A PINNED_VERSION=([1.7]="1.7.24~ds1-6+deb13u1" [2.1]="2.1.9+ds1-5")
SERIES_LIST=(1.7 2.1)
REQUIRED_BINARIES=(containerd ctr containerd-shim-runc-v2)

log() { printf '[install_containerd] %s\n' "$*"; }
die() { printf '[install_containerd] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=private_apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/private_apt.sh"

# True when the unpacked tree for a series has every binary and its containerd runs here.
series_ready() {
    local bin_dir="$CONTAINERD_CACHE/$1/usr/bin" name
    for name in "${REQUIRED_BINARIES[@]}"; do
        [[ -x "$bin_dir/$name" ]] || return 1
    done
    "$bin_dir/containerd" --version >/dev/null 2>&1
}

# Every containerd version the private lists offer, one per line.
offered_versions() {
    apt-cache "${APT_OPTS[@]}" madison containerd | awk -F'|' '{ gsub(/ /, "", $2); print $2 }'
}

# Newest version of a series (e.g. 1.7) among the offered ones (stdin), by dpkg's ordering.
newest_in_series() {
    local series="$1" best="" candidate
    while read -r candidate; do
        [[ "$candidate" == "$series".* ]] || continue
        if [[ -z "$best" ]] || dpkg --compare-versions "$candidate" gt "$best"; then
            best="$candidate"
        fi
    done
    printf '%s\n' "$best"
}

# Download, unpack and check one series; the tree is swapped in only once it is complete.
install_series() {
    local series="$1" version="${PINNED_VERSION[$1]}" work deb offered
    offered=$(offered_versions)
    if ! grep -qxF -- "$version" <<<"$offered"; then
        local fallback
        fallback=$(newest_in_series "$series" <<<"$offered")
        [[ -n "$fallback" ]] || die "no containerd $series.x in Debian trixie/sid any more"
        log "containerd=$version is no longer served; using the newest $series.x: $fallback"
        version="$fallback"
    fi
    work=$(mktemp -d "$CONTAINERD_CACHE/.work-$series.XXXXXX")
    log "downloading containerd=$version"
    (cd "$work" && apt-get "${APT_OPTS[@]}" -qq download "containerd=$version") \
        || die "apt-get download containerd=$version failed"
    deb=$(find "$work" -maxdepth 1 -name 'containerd_*.deb' -print -quit)
    [[ -n "$deb" ]] || die "apt-get download produced no containerd deb"
    dpkg-deb -x "$deb" "$work/tree"
    printf '%s\n' "$version" >"$work/tree/DEB_VERSION"
    local name
    for name in "${REQUIRED_BINARIES[@]}"; do
        [[ -x "$work/tree/usr/bin/$name" ]] || die "containerd=$version deb has no usr/bin/$name"
    done
    "$work/tree/usr/bin/containerd" --version >/dev/null || die "unpacked containerd $version does not run here"
    rm -rf "${CONTAINERD_CACHE:?}/${series:?}"
    mv "$work/tree" "$CONTAINERD_CACHE/$series"
    rm -rf "$work"
    log "containerd $series ready: $("$CONTAINERD_CACHE/$series/usr/bin/containerd" --version)"
}

main() {
    [[ $(id -u) -eq 0 ]] || die "run as root (apt-get needs it)"
    mkdir -p "$CONTAINERD_CACHE"
    # Serialise concurrent runs (parallel CI jobs, two engineers) on the shared cache.
    exec 9>"$CACHE_ROOT/.install_containerd.lock"
    flock 9
    # Half-unpacked trees of an interrupted run (we hold the lock, so none is in progress).
    rm -rf "$CONTAINERD_CACHE"/.work-*

    local missing=() series
    for series in "${SERIES_LIST[@]}"; do
        if series_ready "$series"; then
            log "containerd $series already in $CONTAINERD_CACHE/$series ($(cat "$CONTAINERD_CACHE/$series/DEB_VERSION" 2>/dev/null || echo '?'))"
        else
            missing+=("$series")
        fi
    done
    ((${#missing[@]} == 0)) && return 0

    prepare_private_apt
    for series in "${missing[@]}"; do
        install_series "$series"
    done
}

main "$@"
