# The Debian 12 packages Berth's scripts install, sourced by try.sh (tests/run.sh keeps
# its own, larger list: the try suite checks that it holds all of these).
# shellcheck shell=bash

# What `cargo build` needs beyond a Rust toolchain: protoc (the CRI bindings' build
# script), OpenSSL headers and pkg-config (registry TLS), a C toolchain (the linker,
# berth-pause's freestanding link), CA certificates (crates.io).
build_pkgs=(protobuf-compiler libssl-dev pkg-config gcc libc6-dev ca-certificates)

# What berthd needs to run a pod: the OCI runtime, the CNI plugins of its built-in
# network (bridge, host-local, portmap; iptables comes with them), iproute2, and
# busybox-static for try.sh's image.
run_pkgs=(runc containernetworking-plugins iproute2 busybox-static)

# try.sh's second demonstration: containerd running Berth's shim.
containerd_pkgs=(containerd)

# Installs those of the given packages that are missing (apt-get, as root).
install_missing() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
}
