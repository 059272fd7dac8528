#!/usr/bin/env bash
# Fetches containerd 2.1 (containerd, ctr, containerd-shim-runc-v2) from Debian sid's
# containerd package into a private directory and prints the directory holding the
# binaries. Nothing is installed on the host and nothing on the PATH is replaced: apt-get
# only downloads the .deb through a private sources list and cache, and dpkg-deb unpacks it.
#   bash tests/containerd2.sh [DIR]
# DIR defaults to ${CARGO_TARGET_DIR:-<repo>/target}/containerd-2.1. Idempotent; concurrent
# callers wait on a lock in DIR. Exits non-zero, saying why, when the package cannot be had.
# Only 2.1.x is accepted, so a sid upload of a newer containerd fails here instead of
# silently testing another version.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-${CARGO_TARGET_DIR:-$repo/target}/containerd-2.1}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin="$dir/root/usr/bin"
want="2.1."

log() { echo "containerd2.sh: $*" >&2; }

ready() {
    local b
    for b in containerd ctr containerd-shim-runc-v2; do
        [ -x "$bin/$b" ] || return 1
    done
    "$bin/containerd" --version 2>/dev/null | grep -q " $want"
}

exec 9>"$dir/.lock"
flock 9

if ! ready; then
    apt_dir="$dir/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$dir/debs"
    echo "deb http://deb.debian.org/debian sid main" >"$apt_dir/sources.list"
    apt_opts=(
        -o "Dir::Etc::sourcelist=$apt_dir/sources.list"
        -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o "APT::Get::List-Cleanup=0"
        -o "APT::Sandbox::User=root"
    )
    log "apt-get update (sid lists, private to $apt_dir)"
    apt-get "${apt_opts[@]}" -qq update >&2 || {
        log "apt-get update of Debian sid failed (is deb.debian.org reachable?)"
        exit 1
    }
    version="$(apt-cache "${apt_opts[@]}" madison containerd \
        | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep "^$want" | sort -V | tail -n1 || true)"
    if [ -z "$version" ]; then
        log "Debian sid has no containerd $want* (apt-cache madison containerd:"
        apt-cache "${apt_opts[@]}" madison containerd >&2 || true
        log ")"
        exit 1
    fi
    log "downloading containerd=$version"
    rm -f "$dir/debs"/containerd_*.deb
    # apt-get download writes into the current directory.
    (cd "$dir/debs" && apt-get "${apt_opts[@]}" -qq download "containerd=$version" >&2) || {
        log "apt-get download containerd=$version failed"
        exit 1
    }
    deb="$(ls "$dir/debs"/containerd_*.deb)"
    rm -rf "$dir/root.new" "$dir/root"
    dpkg-deb -x "$deb" "$dir/root.new"
    mv "$dir/root.new" "$dir/root"
    ready || {
        log "unpacked $deb but $bin lacks a working containerd $want* / ctr / containerd-shim-runc-v2"
        exit 1
    }
    # Only the unpacked tree is kept (the sid lists and the .deb are 60 MB).
    rm -rf "$apt_dir" "$dir/debs"
    log "containerd $("$bin/containerd" --version | awk '{print $3}') in $bin"
fi
echo "$bin"
