#!/usr/bin/env bash
# Installs Slurm's daemons and munge; the tests and the bench start a one-node cluster themselves
# (tests/slurm.py), nothing starts here.
set -euo pipefail
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing Slurm and munge"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
