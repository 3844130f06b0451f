#!/usr/bin/env bash
# Installs what the tests need beyond the venv: PostgreSQL server binaries (the tests start a
# throwaway cluster themselves) and a user to run them as when we are root; Slurm's daemons and
# munge (the tests start a one-node cluster themselves); an image registry (started by the tests
# too); Chromium for the web monitor's browser tests; rsync for Snakemake's fs storage plugin;
# Node.js for CWL's JavaScript expressions; a running Docker engine with the project's images; a
# real helm for the chart tests.
set -euo pipefail
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing PostgreSQL server binaries"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
fi
bash "$(dirname "$0")/slurm-install.sh"
if ! command -v docker-registry >/dev/null; then  # a registry the pull tests start on 127.0.0.1
    echo "installing docker-registry"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi
if ! command -v chromium >/dev/null; then  # the web monitor's tests drive it through Playwright
    echo "installing chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if ! command -v rsync >/dev/null; then  # Snakemake's fs storage plugin, in the TES tests, copies with it
    echo "installing rsync"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rsync >/dev/null
fi
if ! command -v node >/dev/null && ! command -v nodejs >/dev/null; then  # cwltool evaluates CWL's JavaScript with it
    echo "installing nodejs"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs >/dev/null
fi
bash "$(dirname "$0")/images.sh"
bash "$(dirname "$0")/helm.sh"
