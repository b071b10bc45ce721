# Helpers shared by the scripts that build Go tools from the module proxy (build_kube.sh, build_spin_operator.sh).
# Source it after setting LOG_TAG (the log prefix) and GO_CACHES (where GOCACHE and GOMODCACHE live).

log() { printf '[%s] %s\n' "$LOG_TAG" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

now_us() { printf '%s\n' "${EPOCHREALTIME/./}"; }
since() {  # start-us -> "12.3 s"
    local ms=$((($(now_us) - $1) / 1000))
    printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# go in one wrapper module, with the shared caches and no influence from the caller's go env or a go.work.
go_in() {  # module-dir go-args...
    local dir=$1
    shift
    (cd "$dir" && GOCACHE="$GO_CACHES/build" GOMODCACHE="$GO_CACHES/mod" GOFLAGS=-mod=readonly GOWORK=off \
        GOTOOLCHAIN=local CGO_ENABLED=0 go "$@")
}

timed() {  # label command... : runs it and logs how long it took
    local label=$1 start
    shift
    start=$(now_us)
    "$@" || die "$label failed"
    log "$label: $(since "$start")"
}

# Builds into a cache directory unless it is current, the way both build scripts keep theirs: the caller defines
# stamp_text (what the output is built from), check_pins, build_all <dir> and verify <dir>, and lists the files the
# output must hold in OUTPUTS. Concurrent runs are serialised by a lock; the output is built in a work directory
# and moved into place, and the stamp is written last, so an interrupted build is never taken for a finished one.
build_cached() {  # cache-dir out-dir what
    local cache=$1 out=$2 what=$3 stamp="$1/.stamp" start work
    output_is_current() {
        local name
        [[ -f "$stamp" && "$(<"$stamp")" == "$(stamp_text)" ]] || return 1
        for name in "${OUTPUTS[@]}"; do
            [[ -e "$out/$name" ]] || return 1
        done
    }
    if output_is_current; then
        log "reusing $out ($what)"
        return
    fi
    command -v go >/dev/null || die "go is not on PATH"
    check_pins
    mkdir -p "$cache" "$GO_CACHES"
    exec 9>"$cache/.lock"
    flock 9
    if output_is_current; then
        log "reusing $out (built by a concurrent run)"
        return
    fi
    rm -rf "$cache"/.work-*  # an interrupted run's (we hold the lock, so none is in progress)
    start=$(now_us)
    work=$(mktemp -d "$cache/.work-XXXXXX")
    log "building $what with $(go env GOVERSION)"
    build_all "$work/out"
    verify "$work/out"
    rm -f "$stamp"
    rm -rf "$out"
    mv "$work/out" "$out"
    rmdir "$work"
    stamp_text >"$stamp"
    log "done in $(since "$start"): $out"
    log "disk use: $(du -sh "$out" | cut -f1) output, $(du -sh "$GO_CACHES/build" | cut -f1) GOCACHE," \
        "$(du -sh "$GO_CACHES/mod" | cut -f1) GOMODCACHE (under $GO_CACHES)"
}
