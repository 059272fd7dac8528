#!/usr/bin/env bash
# Writes an OCI image-layout archive of a busybox image made from the host's
# busybox-static (one layer: /bin/busybox, every applet as a symlink to it, /etc/passwd
# and /etc/group, the usual mount points; Cmd ["sh"]), for `berthd image import` or
# `ctr image import`. No registry needed.
#   bash tests/busybox-image.sh OUT.tar [NAME]     NAME defaults to localhost/busybox:latest
set -euo pipefail
out=${1:?usage: busybox-image.sh OUT.tar [NAME]}
name=${2:-localhost/busybox:latest}
bb=/bin/busybox
[ -x "$bb" ] || { echo "busybox-image.sh: $bb missing (install busybox-static)" >&2; exit 1; }
case "$(dpkg --print-architecture)" in
    amd64) arch=amd64 ;; arm64) arch=arm64 ;; *) arch=$(dpkg --print-architecture) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
blobs=$work/layout/blobs/sha256
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,var} "$blobs"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp "$bb" "$root/bin/busybox"
for a in $("$bb" --list); do
    [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

# A reproducible layer: fixed owner, time and order.
(cd "$root" && tar --numeric-owner --owner=0 --group=0 --mtime=@1 --sort=name -cf "$work/layer.tar" bin etc tmp proc sys dev root var)
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" >"$work/layer.tar.gz"

put() { # FILE VAR: stores FILE as a blob; VAR=its digest (hex), VAR_size=its size.
    local d
    d=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$blobs/$d"
    printf -v "$2" %s "$d"
    printf -v "$2_size" %s "$(stat -c %s "$1")"
}
put "$work/layer.tar.gz" layer
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$diff_id" >"$work/config.json"
put "$work/config.json" config
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
put "$work/manifest.json" manifest
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$name" "${name##*:}" >"$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
tar --numeric-owner --owner=0 --group=0 --mtime=@1 -C "$work/layout" -cf "$out" oci-layout index.json blobs
