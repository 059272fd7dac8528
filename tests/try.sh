#!/usr/bin/env bash
# Berth's first command, for a fresh Debian 12 machine (as root): installs what the build
# and a pod need (tests/packages.sh), builds the release binaries, starts berthd on its
# embedded defaults (CRI socket /run/berth/berth.sock, root /var/lib/berth, state
# /run/berth, its built-in pod network on bridge berth0), imports a busybox image made
# from the host's busybox-static, and runs a pod with a busybox container through berthd
# with berthctl, printing what the container wrote and how to go on.
#   bash tests/try.sh             all of that (idempotent: a second run reuses berthd)
#   bash tests/try.sh containerd  the same, then containerd 1.6 running a container with
#                                 Berth's shim (io.containerd.berth.v2) as a second demo
#   bash tests/try.sh stop        removes everything try.sh made: its pods, berthd (by
#                                 pid), the dirs and the bridge it created, containerd's
# Overrides (the try suite runs it on private paths): BERTH_TRY_RUN (try.sh's own dir,
# default /run/berth-try), BERTH_TRY_SOCKET, BERTH_TRY_ROOT, BERTH_TRY_STATE,
# BERTH_TRY_LOGS (pod logs, default /var/log/pods), BERTH_TRY_CNI_CONF_DIR,
# BERTH_TRY_BRIDGE, BERTH_TRY_SUBNET, BERTH_TRY_IP_MASQ, BERTH_TRY_STREAMING_PORT,
# BERTH_TRY_BIN (a dir of built binaries: no build), BERTH_TRY_INSTALL=0 (check the
# packages, install none).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/packages.sh
. tests/packages.sh

run=${BERTH_TRY_RUN:-/run/berth-try}
socket=${BERTH_TRY_SOCKET:-/run/berth/berth.sock}
root=${BERTH_TRY_ROOT:-/var/lib/berth}
state=${BERTH_TRY_STATE:-/run/berth}
logs=${BERTH_TRY_LOGS:-/var/log/pods}
bridge=${BERTH_TRY_BRIDGE:-berth0}
bin=${BERTH_TRY_BIN:-$PWD/target/release}
image=localhost/busybox:latest

say() { echo "berth-try: $*"; }
die() { echo "berth-try: $*" >&2; exit 1; }

# berthd's flags: only what is overridden, else its embedded defaults. Keys without a
# flag go into a config file of try.sh's own.
berthd_args=()
[ -n "${BERTH_TRY_SOCKET:-}" ] && berthd_args+=(--socket "$socket")
[ -n "${BERTH_TRY_ROOT:-}" ] && berthd_args+=(--root "$root")
[ -n "${BERTH_TRY_STATE:-}" ] && berthd_args+=(--state "$state")
config=""
[ -n "${BERTH_TRY_CNI_CONF_DIR:-}" ] && config+=$'[cni]\n'"conf_dir = \"$BERTH_TRY_CNI_CONF_DIR\""$'\n'
if [ -n "${BERTH_TRY_BRIDGE:-}${BERTH_TRY_SUBNET:-}${BERTH_TRY_IP_MASQ:-}" ]; then
    config+=$'[cni.default]\n'
    [ -n "${BERTH_TRY_BRIDGE:-}" ] && config+="bridge = \"$bridge\""$'\n'
    [ -n "${BERTH_TRY_SUBNET:-}" ] && config+="subnet = \"$BERTH_TRY_SUBNET\""$'\n'
    [ -n "${BERTH_TRY_IP_MASQ:-}" ] && config+="ip_masq = $BERTH_TRY_IP_MASQ"$'\n'
fi
[ -n "${BERTH_TRY_STREAMING_PORT:-}" ] && config+=$'[streaming]\n'"port = $BERTH_TRY_STREAMING_PORT"$'\n'
[ -n "$config" ] && berthd_args=(--config "$run/config.toml" "${berthd_args[@]}")

ctl() { "$bin/berthctl" --endpoint "unix://$socket" "$@"; }

# The pid of the berthd try.sh started, if it still runs.
our_berthd() {
    local pid
    pid=$(cat "$run/berthd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = berthd ] || return 1
    # A berthd killed but not yet reaped is no berthd.
    [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] || return 1
    echo "$pid"
}

start_berthd() {
    [ -n "$config" ] && printf '%s' "$config" >"$run/config.toml"
    # A session of its own: a Ctrl-C in this terminal does not reach it.
    setsid "$bin/berthd" "${berthd_args[@]}" >>"$run/berthd.log" 2>&1 </dev/null &
    echo $! >"$run/berthd.pid"
    for _ in $(seq 100); do
        ctl info >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$run/berthd.pid")" 2>/dev/null || break
        sleep 0.2
    done
    tail -20 "$run/berthd.log" >&2
    die "berthd did not come up (log $run/berthd.log)"
}

# Records a path try.sh creates (removed by stop), unless it exists already.
note_made() {
    [ -e "$1" ] || grep -qxF "$1" "$run/made" 2>/dev/null || echo "$1" >>"$run/made"
}

# Unmounts whatever is still mounted under $1 (deepest first), so removing it removes
# nothing through a mount.
unmount_under() {
    local m
    for m in $(awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}

# The pids of the shims berthd started for pods (`-address SOCKET` on their command line).
shims_of() {
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}; pid=${pid%/cmdline}
        tr '\0' ' ' <"$f" 2>/dev/null | grep -q -- "containerd-shim.* -address $1\( \|$\)" && printf '%s ' "$pid"
    done
    return 0
}

stop_containerd() {
    local cdir=$run/containerd pid
    pid=$(cat "$cdir/containerd.pid" 2>/dev/null) || return 0
    if kill -0 "$pid" 2>/dev/null; then
        local c=(ctr -a "$cdir/containerd.sock")
        for t in $("${c[@]}" containers ls -q 2>/dev/null); do
            "${c[@]}" task kill -s KILL "$t" >/dev/null 2>&1 || true
            "${c[@]}" task delete -f "$t" >/dev/null 2>&1 || true
            "${c[@]}" containers rm "$t" >/dev/null 2>&1 || true
        done
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    unmount_under "$cdir"
}

stop() {
    [ -d "$run" ] || { say "nothing to stop ($run does not exist)"; return 0; }
    local pid
    if [ -f "$run/berthd.pid" ] && ! our_berthd >/dev/null && [ -x "$bin/berthd" ]; then
        # A berthd try.sh started that has died meanwhile comes back to remove its pods
        # (in a subshell: if it cannot, the rest is still cleaned up).
        (start_berthd) || say "berthd did not come back: its pods may be left"
    fi
    if pid=$(our_berthd); then
        ctl rmp --all || say "removing the pods failed (see above)"
        kill -TERM "$pid"
        for _ in $(seq 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            say "berthd (pid $pid) did not exit within 15 s of SIGTERM: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    stop_containerd
    # The pods' shims outlive berthd by design: while one runs, its dirs stay.
    local shims
    shims=$(shims_of "$socket")
    [ -z "$shims" ] || die "pod shims still run (pids $shims): nothing removed; run 'try.sh stop' again"
    if [ -f "$run/made-bridge" ] && ip link show "$bridge" >/dev/null 2>&1; then
        ip link del "$bridge"
    fi
    if [ -f "$run/made" ]; then
        while read -r d; do
            [ -n "$d" ] || continue
            unmount_under "$d"
            rm -rf "$d"
        done <"$run/made"
    fi
    unmount_under "$run"
    rm -rf "$run"
    say "stopped: berthd, its pods and what try.sh made are gone"
}

ensure_packages() {
    local pkgs=("${run_pkgs[@]}" "$@")
    [ -n "${BERTH_TRY_BIN:-}" ] || pkgs+=("${build_pkgs[@]}")
    if [ "${BERTH_TRY_INSTALL:-1}" = 0 ]; then
        local p missing=()
        for p in "${pkgs[@]}"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        [ "${#missing[@]}" -eq 0 ] || die "missing packages: ${missing[*]} (BERTH_TRY_INSTALL=0)"
    else
        install_missing "${pkgs[@]}"
    fi
}

build() {
    [ -n "${BERTH_TRY_BIN:-}" ] && return 0
    command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup), then run this again"
    say "building the release binaries (a few minutes the first time)"
    cargo build --release -p berthd --bins
    cargo shim-release
}

demo_pod() {
    # A pod from an earlier run goes first (names are unique per namespace here).
    if ctl pods -q --name hello | grep -q .; then
        ctl rmp hello >/dev/null
    fi
    say "running a pod with a busybox container through berthd:"
    echo "  berthctl run --name hello $image -- sh -c '...'"
    local script='echo "hello from pod $(hostname), run by berthd"; ip -4 -o addr show dev eth0 | awk "{print \"pod IP:\", \$4}"'
    ctl run --name hello --log-root "$logs" "$image" -- sh -c "$script" >/dev/null
    say "its output (berthctl logs -f hello):"
    ctl logs -f hello | sed 's/^/  | /'
}

demo_containerd() {
    ensure_packages "${containerd_pkgs[@]}"
    local cdir=$run/containerd
    local c=(ctr -a "$cdir/containerd.sock")
    mkdir -p "$cdir/bin"
    ln -sf "$bin/containerd-shim-berth-v2" "$cdir/bin/containerd-shim-berth-v2"
    cat >"$cdir/config.toml" <<TOML
version = 2
root = "$cdir/root"
state = "$cdir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$cdir/containerd.sock"
[ttrpc]
  address = "$cdir/containerd.sock.ttrpc"
TOML
    if ! "${c[@]}" version >/dev/null 2>&1; then
        PATH=$cdir/bin:$PATH setsid containerd --config "$cdir/config.toml" >"$cdir/containerd.log" 2>&1 </dev/null &
        echo $! >"$cdir/containerd.pid"
        for _ in $(seq 50); do "${c[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
    fi
    "${c[@]}" image import "$run/busybox.tar" >/dev/null
    say "containerd (socket $cdir/containerd.sock) runs a container with Berth's shim:"
    "${c[@]}" run --rm --runtime io.containerd.berth.v2 "$image" "hello-$$" \
        sh -c 'echo "hello from pid $$ in a container run by containerd with Berth'"'"'s shim"' | sed 's/^/  | /'
}

case "${1:-}" in
    stop) stop; exit 0 ;;
    "" | containerd) ;;
    *) die "usage: bash tests/try.sh [containerd|stop]" ;;
esac

[ "$(id -u)" -eq 0 ] || die "run as root (berthd manages mounts, namespaces and cgroups)"
ensure_packages
build
for b in berthd berthctl berth-pause containerd-shim-berth-v2; do
    [ -x "$bin/$b" ] || die "$bin/$b missing"
done

mkdir -p "$run"
if pid=$(our_berthd); then
    say "berthd already runs (pid $pid)"
else
    if [ -S "$socket" ] && ctl info >/dev/null 2>&1; then
        die "a berthd try.sh did not start serves $socket: stop it, or set BERTH_TRY_SOCKET"
    fi
    for d in "$root" "$state" "$logs"; do note_made "$d"; done
    ip link show "$bridge" >/dev/null 2>&1 || touch "$run/made-bridge"
    # The image, into berthd's store while berthd is stopped.
    bash tests/busybox-image.sh "$run/busybox.tar" "$image"
    [ -n "$config" ] && printf '%s' "$config" >"$run/config.toml"
    "$bin/berthd" "${berthd_args[@]}" image import "$run/busybox.tar" >/dev/null
    start_berthd
fi
say "berthd (pid $(cat "$run/berthd.pid")) serves CRI on unix://$socket (log $run/berthd.log)"
ctl info | sed 's/^/  /'
demo_pod
[ "${1:-}" = containerd ] && demo_containerd

cat <<TXT
berth-try: go on with berthctl (docs/berthctl.md), after: export PATH=$bin:\$PATH
  berthctl pods                # pod sandboxes (ps -a: containers, images: images)
  berthctl run --name web $image -- sh -c 'while sleep 1; do date; done'
  berthctl logs -f web         # Ctrl-C to stop following
  berthctl exec -it web sh     # a shell in the container
  berthctl rmp web             # stop and remove the pod
  bash tests/try.sh stop       # remove everything try.sh made
TXT
[ "$socket" = /run/berth/berth.sock ] || echo "  (berthctl needs --endpoint unix://$socket, or BERTHCTL_ENDPOINT set to it)"
