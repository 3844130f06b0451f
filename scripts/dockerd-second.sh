#!/usr/bin/env bash
# Starts a second Docker engine on this machine, for the tests of several Docker nodes: its own
# socket, data root, exec root and bridge (never `--bridge none`: that deletes docker0 and breaks
# the first engine). It leaves iptables to the first engine. Prints its endpoint. Idempotent.
set -euo pipefail
NAME=jobnest-docker2
SOCK=/var/run/$NAME.sock
BRIDGE=jnbr2
ping() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }
if ! ping; then
    bash "$(dirname "$0")/dockerd-up.sh"  # installs dockerd if needed
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
        ip addr add 10.231.0.1/24 dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    if [ -f /var/run/$NAME.pid ] && ! kill -0 "$(cat /var/run/$NAME.pid)" 2>/dev/null; then
        rm -f /var/run/$NAME.pid
    fi
    setsid nohup dockerd --host "unix://$SOCK" --data-root /var/lib/$NAME --exec-root /var/run/$NAME \
        --pidfile /var/run/$NAME.pid --bridge "$BRIDGE" --iptables=false --ip-masq=false --mtu 1400 \
        --log-opt max-size=10m --log-opt max-file=2 >/var/log/$NAME.log 2>&1 </dev/null &
    for _ in $(seq 1 150); do ping && break; sleep 0.2; done
    ping || { echo "second dockerd did not answer; its log ends:" >&2; tail -20 /var/log/$NAME.log >&2; exit 1; }
fi
want=$(docker image inspect jobnest/busybox:latest --format '{{.Id}}')
have=$(DOCKER_HOST="unix://$SOCK" docker image inspect jobnest/busybox:latest --format '{{.Id}}' 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    docker save jobnest/busybox:latest | DOCKER_HOST="unix://$SOCK" docker load >/dev/null
fi
echo "unix://$SOCK"
