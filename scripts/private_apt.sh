# Sourced, not run: the private apt configuration scripts/install_containerd.sh and scripts/vendor_cri_proto.sh share.
#
# Why: Debian trixie/sid packages (containerd 1.7, 2.1, the CRI API protos; nothing on PyPI or npm ships containerd)
# run on bookworm (they need libc6 >= 2.34) and are fetched from the mirror the machine's apt already uses, with a
# sources list, lists and cache of our own, so /etc/apt and the machine's apt state are never touched; debs are only
# unpacked.
#
# Needs from the caller: APT_PRIVATE (the private apt tree), and log/die functions. Sets APT_OPTS.

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources

# The archive URI apt already uses for Debian itself (not the -security one).
find_mirror() {
    local mirror=""
    if [[ -r "$DEBIAN_SOURCES" ]]; then
        mirror=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$DEBIAN_SOURCES")
    fi
    if [[ -z "$mirror" && -r /etc/apt/sources.list ]]; then
        mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/ && $i !~ /security/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    [[ -n "$mirror" ]] || die "cannot find the Debian mirror URI in $DEBIAN_SOURCES or /etc/apt/sources.list"
    printf '%s\n' "$mirror"
}

APT_OPTS=()
# Write the private apt tree and run `apt-get update` against trixie + sid only.
prepare_private_apt() {
    local mirror
    mirror=$(find_mirror)
    [[ -r "$KEYRING" ]] || die "$KEYRING missing (install debian-archive-keyring)"
    mkdir -p "$APT_PRIVATE"/lists/partial "$APT_PRIVATE"/cache/archives/partial
    cat >"$APT_PRIVATE/sources.list" <<EOF
deb [signed-by=$KEYRING] $mirror trixie main
deb [signed-by=$KEYRING] $mirror sid main
EOF
    APT_OPTS=(
        -o "Dir::Etc::SourceList=$APT_PRIVATE/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$APT_PRIVATE/lists"
        -o "Dir::Cache=$APT_PRIVATE/cache"
        # We run as root on purpose; this only silences the harmless "unsandboxed as root" warning.
        -o "APT::Sandbox::User=root"
    )
    log "apt-get update (private lists: trixie + sid from $mirror)"
    apt-get "${APT_OPTS[@]}" -qq update || die "private apt-get update failed"
}
