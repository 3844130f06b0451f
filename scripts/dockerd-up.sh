#!/usr/bin/env bash
# Makes sure a Docker daemon answers on /var/run/docker.sock: installs docker.io from Debian
# when dockerd is missing and starts it (there is no systemd here). Idempotent.
set -euo pipefail
SOCK=/var/run/docker.sock
ping() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }
command -v curl >/dev/null && ping && exit 0
if ! command -v dockerd >/dev/null || ! command -v curl >/dev/null || ! command -v ip >/dev/null; then
    echo "installing docker.io"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io curl iproute2 >/dev/null
fi
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
fi
setsid nohup dockerd --mtu 1400 --log-opt max-size=10m --log-opt max-file=2 >/var/log/jobnest-dockerd.log 2>&1 </dev/null &
for _ in $(seq 1 150); do
    ping && exit 0
    sleep 0.2
done
echo "dockerd did not answer on $SOCK; its log ends:" >&2
tail -20 /var/log/jobnest-dockerd.log >&2
exit 1
