#!/usr/bin/env bash
# Berth's whole test command: run as root on a fresh Debian 12 from the repository root.
# Installs what the black-box suites need, then fmt check, clippy -D warnings, build, test.
# BERTH_TEST_REFERENCE=1 runs the suites against containerd's Go shim instead of ours
# (Debian 12's for containerd 1.6, the 2.1 package's own for containerd 2.1).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: must run as root (it starts containerd and containers)" >&2
    exit 1
fi

pkgs=(containerd runc crun containernetworking-plugins busybox-static criu skopeo
      docker-registry apache2-utils protobuf-compiler libssl-dev pkg-config openssl
      iproute2 util-linux mount ca-certificates e2fsprogs fuse3 fuse-overlayfs
      dpkg-dev systemd)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
fi

# containerd 2.1 (Debian sid's package, unpacked under target/, nothing installed): the
# containerd suites also run against it. Fails here when it cannot be had.
BERTH_CONTAINERD2_BIN="$(bash tests/containerd2.sh)"
export BERTH_CONTAINERD2_BIN
echo "tests/run.sh: containerd 2.1 from $BERTH_CONTAINERD2_BIN"

# crun 1.8 wants a v1 hugetlb hierarchy when the host is cgroup v1 with hugetlb left on v2.
if [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p /sys/fs/cgroup/hugetlb
    mountpoint -q /sys/fs/cgroup/hugetlb || mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb || true
fi

command -v cargo >/dev/null || { echo "tests/run.sh: cargo not found (install rustup)" >&2; exit 1; }

# cargo-deb packs the Debian package (daemon/packaging/build-deb.sh); built once per machine.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
# The berth package, for tests/tests/deb_package.rs (a release build: a few minutes).
BERTH_DEB="$(bash daemon/packaging/build-deb.sh | tail -n 1)"
export BERTH_DEB
echo "tests/run.sh: package $BERTH_DEB"
# Each test starts its own containerd; two at a time suit a 2-core machine.
threads="${BERTH_TEST_THREADS:-2}"
start=$(date +%s)
if cargo test --workspace -- --test-threads="$threads"; then
    echo "tests/run.sh: SUMMARY: all tests passed in $(( $(date +%s) - start ))s"
else
    echo "tests/run.sh: SUMMARY: FAILED after $(( $(date +%s) - start ))s" >&2
    exit 1
fi
