#!/usr/bin/env bash
# `make images`: builds the images jobs run in, without a registry, and only when their inputs
# changed (the inputs' digest is kept as a label on the image).
#   jobnest/busybox:latest   a 2 MB image of Debian's static busybox, for command jobs
#   jobnest/debian:bookworm  a minimal Debian with Python 3, made with debootstrap
#   jobnest/jobnest:latest   the repo's Dockerfile on that base: controller, SDK and CLI
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

# A Debian base: debootstrap from the mirror apt uses here.
BASE="bookworm minbase python3,python3-venv,ca-certificates"  # change it to rebuild the base
base_inputs=$(echo "$BASE" | sha256sum | cut -c1-16)
have=$(docker image inspect jobnest/debian:bookworm --format '{{ index .Config.Labels "jobnest.inputs" }}' 2>/dev/null || true)
if [ "$have" != "$base_inputs" ]; then
    command -v debootstrap >/dev/null || {
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    mirror=$( (sed -n 's|^URIs: *\(https\{0,1\}://[^ ]*/debian/\{0,1\}\)$|\1|p' /etc/apt/sources.list.d/*.sources;
               sed -n 's|^deb \(https\{0,1\}://[^ ]*/debian/\{0,1\}\) bookworm .*|\1|p' /etc/apt/sources.list) \
             2>/dev/null | head -1 || true)
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        "${mirror:-http://deb.debian.org/debian}" >/dev/null
    tar -C "$rootfs" -c . | docker import --change "LABEL jobnest.inputs=$base_inputs" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - jobnest/debian:bookworm >/dev/null
    rm -rf "$rootfs"
    echo "built jobnest/debian:bookworm ($base_inputs)"
fi

# The jobnest image, from wheels of this checkout and its dependencies.
app_inputs=$( (docker image inspect jobnest/debian:bookworm --format '{{.Id}}'; cat Dockerfile pyproject.toml setup.py shim/* scripts/build-shim.sh;
               find sdk controller -name '*.py' -o -name '*.pyi' -o -name py.typed -o -path '*/web/static/*' -type f | sort | xargs cat) | sha256sum | cut -c1-16)
have=$(docker image inspect jobnest/jobnest:latest --format '{{ index .Config.Labels "jobnest.inputs" }}' 2>/dev/null || true)
if [ "$have" != "$app_inputs" ]; then
    rm -rf build/wheels
    .venv/bin/python -m pip wheel -q '.[postgres,docker,kubernetes]' -w build/wheels 2> >(grep -v '^WARNING: Location' >&2)
    rm -rf build/lib build/bdist.*  # setuptools' leftovers
    DOCKER_BUILDKIT=0 docker build -q --label "jobnest.inputs=$app_inputs" -t jobnest/jobnest:latest . >/dev/null
    echo "built jobnest/jobnest:latest ($app_inputs)"
fi
