#!/usr/bin/env bash
# Build, from the Go module proxy, the binaries a single-node Kubernetes test cluster needs, and cache them keyed by
# the pinned versions. Run as root (the cache is under /var/cache); needs only `go` on PATH and GOPROXY. A second
# run with the same pins is a no-op.
#
#  - Kubernetes v1.34.4 (kubelet 1.35+ refuses cgroup v1 by default; these machines are cgroup v1): kube-apiserver,
#    kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl from k8s.io/kubernetes. That module can't
#    be `go install`ed (its go.mod replaces k8s.io/api, k8s.io/client-go, ... with ./staging paths), so
#    scripts/kube/go.mod wraps it and pins every staging module to the matching v0.34.4 release.
#  - etcd v3.6.5 (what Kubernetes v1.34.4 runs against: hack/lib/etcd.sh, kubeadm's DefaultEtcdVersion) from
#    go.etcd.io/etcd/server/v3, through scripts/kube/etcd/go.mod (that go.mod has ../ replaces too).
#  - crictl and critest v1.34.0 from sigs.k8s.io/cri-tools, through scripts/kube/cri-tools/go.mod; critest is the
#    `go test -c` binary of cmd/critest, as cri-tools' Makefile builds it.
# Each tool has its own wrapper module, so each builds with exactly the dependency versions its own go.mod names.
# The flags follow the upstream builds: static (CGO_ENABLED=0), -trimpath, stripped (-s -w), Kubernetes' build tags
# (selinux,notest,grpcnotrace) and its version ldflags (hack/lib/version.sh), cri-tools' version ldflag.
#
# Result: ${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}/kube/v1.34.4/bin/{kube-apiserver,
#         kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl,etcd,crictl,critest}, plus a .stamp (the
#         pins, the flags and hashes of the wrapper module files) written last. GOCACHE and GOMODCACHE of these builds are
#         under .../go/, so rebuilds on the machine are fast and the repo stays clean.
set -euo pipefail

KUBE_VERSION=v1.34.4         # k8s.io/kubernetes; the staging modules (k8s.io/api, ...) at v0.34.4
ETCD_VERSION=v3.6.5          # go.etcd.io/etcd/server/v3
CRI_TOOLS_VERSION=v1.34.0    # sigs.k8s.io/cri-tools
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
KUBE_TAGS=selinux,notest,grpcnotrace  # hack/lib/golang.sh's tags for a non-debug build
# The tag's commit time as the proxy reports it (go mod download -json: .Time): the binaries' buildDate, so that a
# rebuild gives the same bytes. The proxy does not report the commit, so gitCommit stays empty.
KUBE_BUILD_DATE=2026-02-10T12:53:36Z

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODULES="$REPO_ROOT/scripts/kube"
CACHE_ROOT="${SPIN_SHIM_CACHE:-/var/cache/containerd-shim-spin-test}"
KUBE_CACHE="$CACHE_ROOT/kube/$KUBE_VERSION"
BIN_DIR="$KUBE_CACHE/bin"
GO_CACHES="$CACHE_ROOT/go"
LOG_TAG=build_kube
# shellcheck source=lib/go_build.sh
source "$REPO_ROOT/scripts/lib/go_build.sh"

KUBE_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
OUTPUTS=("${KUBE_COMMANDS[@]}" etcd crictl critest)  # build_cached checks they are all there
MODULE_FILES=(
    "$MODULES/go.mod" "$MODULES/go.sum"
    "$MODULES/etcd/go.mod" "$MODULES/etcd/go.sum"
    "$MODULES/cri-tools/go.mod" "$MODULES/cri-tools/go.sum" "$MODULES/cri-tools/tools.go"
)

# What a complete bin dir was built from: the pins, the flags, then a hash of each wrapper module file.
stamp_text() {
    printf 'kubernetes %s\netcd %s\ncri-tools %s\n' "$KUBE_VERSION" "$ETCD_VERSION" "$CRI_TOOLS_VERSION"
    printf 'kube tags %s\nkube ldflags %s\ncri-tools ldflags %s\n' "$KUBE_TAGS" "$(kube_ldflags)" "$(cri_tools_ldflags)"
    (cd "$MODULES" && sha256sum "${MODULE_FILES[@]#"$MODULES/"}")
}

# The pins above must be the ones the wrapper modules require.
check_pins() {
    local pattern
    requires() {  # go.mod module version
        grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2 $3( |\$)" "$1" || die "$1 does not require $2 $3 (update it)"
    }
    requires "$MODULES/go.mod" k8s.io/kubernetes "$KUBE_VERSION"
    requires "$MODULES/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    requires "$MODULES/cri-tools/go.mod" sigs.k8s.io/cri-tools "$CRI_TOOLS_VERSION"
    # Every staging replace is at the release matching KUBE_VERSION.
    pattern="^[[:space:]]+(k8s\.io/[a-z0-9-]+) => \\1 "
    if grep -E "$pattern" "$MODULES/go.mod" | grep -Ev "$pattern$STAGING_VERSION\$" | grep -q .; then
        die "$MODULES/go.mod replaces some staging module with a version other than $STAGING_VERSION"
    fi
    grep -Eq "$pattern$STAGING_VERSION\$" "$MODULES/go.mod" || die "$MODULES/go.mod pins no staging module"
}

kube_ldflags() {
    local -a flags=(-s -w)
    local key value
    for key in gitVersion gitMajor gitMinor gitCommit gitTreeState buildDate; do
        case $key in
            gitVersion) value=$KUBE_VERSION ;;
            gitCommit) value= ;;  # else "$Format:%H$"; empty makes client-go's User-Agent say "kubernetes/unknown"
            gitMajor) value=$(cut -d. -f1 <<<"${KUBE_VERSION#v}") ;;
            gitMinor) value=$(cut -d. -f2 <<<"$KUBE_VERSION") ;;
            gitTreeState) value=archive ;;  # what hack/lib/version.sh says for a build from a source archive
            buildDate) value=$KUBE_BUILD_DATE ;;
        esac
        flags+=("-X=k8s.io/component-base/version.$key=$value" "-X=k8s.io/client-go/pkg/version.$key=$value")
    done
    printf '%s\n' "${flags[*]}"
}

download_modules() {
    go_in "$MODULES" mod download && go_in "$MODULES/etcd" mod download && go_in "$MODULES/cri-tools" mod download
}

cri_tools_ldflags() { printf '%s\n' "-s -w -X=sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}"; }

build_all() {  # out-dir
    local out=$1 name crit_ldflags
    crit_ldflags=$(cri_tools_ldflags)
    timed "download modules" download_modules
    # One command at a time: on 2 cores one `go build` of all six took 779 s from a cold GOCACHE, six in a row 629 s
    # (the first pays for the shared packages, the rest mostly link). The binaries are the same bytes either way.
    for name in "${KUBE_COMMANDS[@]}"; do
        timed "build $name" go_in "$MODULES" build -trimpath -tags "$KUBE_TAGS" \
            -ldflags "$(kube_ldflags)" -o "$out/$name" "k8s.io/kubernetes/cmd/$name"
    done
    timed "build etcd" go_in "$MODULES/etcd" build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
    timed "build crictl" go_in "$MODULES/cri-tools" build -trimpath -ldflags "$crit_ldflags" -o "$out/crictl" \
        sigs.k8s.io/cri-tools/cmd/crictl
    timed "build critest" go_in "$MODULES/cri-tools" test -c -trimpath -ldflags "$crit_ldflags" -o "$out/critest" \
        sigs.k8s.io/cri-tools/cmd/critest
}

# Each binary runs here and reports the pinned version.
verify() {  # bin-dir
    local dir=$1 name output
    expect() {  # name wanted-substring command...
        local name=$1 want=$2
        shift 2
        output=$("$@" 2>&1) || die "$name: '$*' failed: $output"
        grep -qF -- "$want" <<<"$output" || die "$name: '$*' does not report $want: $output"
        log "$name: $(grep -F -m1 -- "$want" <<<"$output")"
    }
    for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
        expect "$name" "Kubernetes $KUBE_VERSION" "$dir/$name" --version
    done
    expect kubectl "Client Version: $KUBE_VERSION" "$dir/kubectl" version --client
    expect kubectl '"gitCommit": ""' "$dir/kubectl" version --client -o json
    expect etcd "etcd Version: ${ETCD_VERSION#v}" "$dir/etcd" --version
    expect crictl "crictl version ${CRI_TOOLS_VERSION#v}" "$dir/crictl" --version
    expect critest "critest version: ${CRI_TOOLS_VERSION#v}" "$dir/critest" --version
}

main() {
    build_cached "$KUBE_CACHE" "$BIN_DIR" "kubernetes $KUBE_VERSION, etcd $ETCD_VERSION, cri-tools $CRI_TOOLS_VERSION"
}

main "$@"
