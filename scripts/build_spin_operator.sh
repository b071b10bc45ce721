#!/usr/bin/env bash
# Build SpinKube's spin-operator from the Go module proxy and cache it, with its CRDs, keyed by the pinned version.
# Run as root (the cache is under /var/cache); needs only `go` on PATH and GOPROXY. A second run is a no-op.
#
# The proxy serves the operator under its first module path, github.com/spinkube/spin-operator, up to v0.6.1 (the
# github.com/spinframework/spin-operator path it moved to is refused), so that is the release pinned here.
# scripts/kube/spin-operator/go.mod wraps it (`tool github.com/spinkube/spin-operator/cmd`), so it builds with the
# dependency versions its own go.mod names. Flags as its Makefile's `build` target: -s -w and the
# prometheus/common/version ldflags; static and -trimpath like the other tools here. The CRDs are the module's own
# config/crd/bases, as `make install` applies them.
#
# Result: ${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}/spin-operator/v0.6.1/dist/{spin-operator,
#         crds/core.spinkube.dev_spinapps.yaml,crds/core.spinkube.dev_spinappexecutors.yaml} and a .stamp written
#         last. It shares GOCACHE and GOMODCACHE with scripts/build_kube.sh (under .../go/).
set -euo pipefail

OPERATOR_MODULE=github.com/spinkube/spin-operator
OPERATOR_VERSION=v0.6.1
# What the proxy reports for the tag (go mod download -json: .Origin.Hash, .Time): the build's revision and date.
OPERATOR_COMMIT=96c9d1d1d69c2c04e005375c44f323fb10e31002
OPERATOR_BUILD_DATE=2025-07-09T17:57:11Z

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULE_DIR="$REPO_ROOT/scripts/kube/spin-operator"
CACHE_ROOT="${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}"
OPERATOR_CACHE="$CACHE_ROOT/spin-operator/$OPERATOR_VERSION"
OUT_DIR="$OPERATOR_CACHE/dist"
GO_CACHES="$CACHE_ROOT/go"
LOG_TAG=build_spin_operator
# shellcheck source=lib/go_build.sh
source "$REPO_ROOT/scripts/lib/go_build.sh"

CRDS=(core.spinkube.dev_spinapps.yaml core.spinkube.dev_spinappexecutors.yaml)
OUTPUTS=(spin-operator "${CRDS[@]/#/crds/}")

operator_ldflags() {
    local pkg=github.com/prometheus/common/version
    printf '%s\n' "-s -w -X=$pkg.Version=${OPERATOR_VERSION#v} -X=$pkg.Revision=$OPERATOR_COMMIT" \
        "-X=$pkg.BuildDate=$OPERATOR_BUILD_DATE -X=$pkg.Branch=$OPERATOR_VERSION"
}

stamp_text() {
    printf 'spin-operator %s %s\nldflags %s\n' "$OPERATOR_MODULE" "$OPERATOR_VERSION" "$(operator_ldflags)"
    (cd "$MODULE_DIR" && sha256sum go.mod go.sum)
}

check_pins() {
    grep -Eq "^[[:space:]]*(require[[:space:]]+)?$OPERATOR_MODULE $OPERATOR_VERSION( |\$)" "$MODULE_DIR/go.mod" ||
        die "$MODULE_DIR/go.mod does not require $OPERATOR_MODULE $OPERATOR_VERSION (update it)"
}

build_all() {  # out-dir
    local out=$1 source_dir name
    timed "download modules" go_in "$MODULE_DIR" mod download
    timed "build spin-operator" go_in "$MODULE_DIR" build -trimpath -ldflags "$(operator_ldflags)" \
        -o "$out/spin-operator" "$OPERATOR_MODULE/cmd"
    source_dir=$(go_in "$MODULE_DIR" list -m -f '{{.Dir}}' "$OPERATOR_MODULE")
    mkdir -p "$out/crds"
    for name in "${CRDS[@]}"; do
        install -m 0644 "$source_dir/config/crd/bases/$name" "$out/crds/$name"
    done
}

verify() {  # out-dir
    local out=$1 output
    # The operator logs its version only once connected to a cluster; the binary's build info names the module.
    output=$(go version -m "$out/spin-operator") || die "go version -m $out/spin-operator failed"
    grep -Eq "^[[:space:]]+path[[:space:]]+$OPERATOR_MODULE/cmd\$" <<<"$output" ||
        die "$out/spin-operator is not $OPERATOR_MODULE/cmd: $output"
    grep -Eq "^[[:space:]]+mod[[:space:]]+$OPERATOR_MODULE[[:space:]]+$OPERATOR_VERSION[[:space:]]" <<<"$output" ||
        die "$out/spin-operator is not built from $OPERATOR_MODULE $OPERATOR_VERSION: $output"
    grep -q "^kind: CustomResourceDefinition" "$out/crds/core.spinkube.dev_spinapps.yaml" ||
        die "$out/crds/core.spinkube.dev_spinapps.yaml is not a CRD"
    log "spin-operator: version ${OPERATOR_VERSION#v} ($OPERATOR_COMMIT), CRDs: ${CRDS[*]}"
}

build_cached "$OPERATOR_CACHE" "$OUT_DIR" "spin-operator $OPERATOR_VERSION"
