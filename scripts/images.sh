#!/usr/bin/env bash
# `make images`: builds the images jobs run in, without a registry, and only when their inputs
# changed (the inputs' digest is kept as a label on the image).
#   jobnest/busybox:latest  a 2 MB image of Debian's static busybox, for command jobs
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/dockerd-up.sh

# The image holds nothing but busybox, so it must be the static build.
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
fi

inputs=$( (sha256sum /bin/busybox scripts/images.sh) | sha256sum | cut -c1-16)
have=$(docker image inspect jobnest/busybox:latest --format '{{ index .Config.Labels "jobnest.inputs" }}' 2>/dev/null || true)
if [ "$have" != "$inputs" ]; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
    chmod 1777 "$root/tmp"
    tar -C "$root" -c . | docker import --change "LABEL jobnest.inputs=$inputs" \
        --change 'ENV PATH=/bin' - jobnest/busybox:latest >/dev/null
    echo "built jobnest/busybox:latest ($inputs)"
fi
