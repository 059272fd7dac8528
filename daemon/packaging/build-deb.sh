#!/usr/bin/env bash
# Builds the `berth` Debian package from the repository (docs/packaging.md) and prints
# the .deb's path as its last line. Needs cargo-deb (`cargo install cargo-deb --locked`).
# The binaries are built here, not by cargo-deb: berthd and berth-pause, berth-torture
# (from the tests crate) and the shim as shipped (`cargo shim-release`: static, non-PIE).
# BERTH_DEB_DIR=dir puts the .deb there (default: <target>/debian).
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v cargo-deb >/dev/null || {
    echo "build-deb.sh: cargo-deb not found (cargo install cargo-deb --locked)" >&2
    exit 1
}
cargo build --release --locked -p berthd --bins
cargo build --release --locked -p berth-tests --bin berth-torture
# Last: a release build of the whole workspace would replace the shim with a dynamic one.
cargo shim-release
out=()
if [ -n "${BERTH_DEB_DIR:-}" ]; then
    mkdir -p "$BERTH_DEB_DIR"
    out=(--output "$BERTH_DEB_DIR")
fi
cargo deb -p berthd --no-build --locked "${out[@]}" | tail -n 1
