#!/usr/bin/env bash
# Starts Berth on its defaults, for a first look: builds the release binaries, starts
# berthd on its embedded defaults (CRI socket /run/berth/berth.sock, root /var/lib/berth,
# state /run/berth), and also starts a
# private containerd 1.6 (socket /run/berth-try/containerd.sock) whose runtime is Berth's
# shim (io.containerd.berth.v2) and runs a busybox container through it.
#   bash tests/try.sh         start (idempotent) and run a hello container
#   bash tests/try.sh stop    stop that containerd and remove its tasks and dirs
set -euo pipefail
cd "$(dirname "$0")/.."
run=/run/berth-try
lib=/var/lib/berth-try
sock=$run/containerd.sock
ctr=(ctr -a "$sock")

stop() {
    if [ -f "$run/berthd.pid" ]; then
        kill -TERM "$(cat "$run/berthd.pid")" 2>/dev/null || true
        sleep 1
    fi
    if [ -f "$run/containerd.pid" ]; then
        for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do
            "${ctr[@]}" task kill -s KILL "$c" >/dev/null 2>&1 || true
            "${ctr[@]}" task delete -f "$c" >/dev/null 2>&1 || true
            "${ctr[@]}" containers rm "$c" >/dev/null 2>&1 || true
        done
        kill "$(cat "$run/containerd.pid")" 2>/dev/null || true
        sleep 1
    fi
    rm -rf "$run" "$lib"
    echo "berth-try: stopped"
}
[ "${1:-}" = stop ] && { stop; exit 0; }

[ "$(id -u)" -eq 0 ] || { echo "try.sh: run as root" >&2; exit 1; }
need=()
# The build needs protoc (the CRI bindings), OpenSSL headers and pkg-config.
for p in containerd runc busybox-static protobuf-compiler libssl-dev pkg-config ca-certificates; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
[ "${#need[@]}" -eq 0 ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; }

cargo build --release --workspace
cargo shim-release
install -m 0755 target/release/containerd-shim-berth-v2 /usr/local/bin/containerd-shim-berth-v2

mkdir -p "$run"
if ! [ -S /run/berth/berth.sock ]; then
    nohup target/release/berthd >"$run/berthd.log" 2>&1 &
    echo $! >"$run/berthd.pid"
    for _ in $(seq 50); do [ -S /run/berth/berth.sock ] && break; sleep 0.1; done
fi
[ -S /run/berth/berth.sock ] && echo "berth-try: berthd serves CRI on unix:///run/berth/berth.sock (log $run/berthd.log)"

mkdir -p "$run" "$lib/rootfs/bin" "$lib/rootfs/proc" "$lib/rootfs/dev" "$lib/rootfs/sys" "$lib/rootfs/tmp"
cp /bin/busybox "$lib/rootfs/bin/busybox"
for c in sh echo cat ls ps sleep true; do ln -sf busybox "$lib/rootfs/bin/$c"; done
cat > "$run/config.toml" <<TOML
version = 2
root = "$lib/root"
state = "$run/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
TOML
if ! [ -S "$sock" ] || ! "${ctr[@]}" version >/dev/null 2>&1; then
    PATH=/usr/local/bin:$PATH nohup containerd --config "$run/config.toml" >"$run/containerd.log" 2>&1 &
    echo $! >"$run/containerd.pid"
    for _ in $(seq 50); do "${ctr[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
fi
"${ctr[@]}" run --rm --runtime io.containerd.berth.v2 --rootfs "$lib/rootfs" "hello-$$" \
    /bin/sh -c 'echo "hello from pid $$ in a container run by Berth"'
cat <<TXT
berth-try: berthd is up (crictl --runtime-endpoint unix:///run/berth/berth.sock runp/pods/stopp/rmp),
and containerd is running with Berth's shim as runtime io.containerd.berth.v2:
  ${ctr[*]} run -d --runtime io.containerd.berth.v2 --rootfs $lib/rootfs demo /bin/sh -c 'while sleep 1; do date; done'
  ${ctr[*]} task ls
  bash tests/try.sh stop
TXT
