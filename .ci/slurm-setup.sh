#!/usr/bin/env bash
# CI: install a one-node SLURM cluster's software (Debian's slurm-wlm + munge) if missing, so
# the `slurm` tests run instead of skipping. Only installs: tests/helpers/slurm_cluster.py writes the
# config and starts (and later stops) munged, slurmctld and slurmd itself. Idempotent.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sinfo >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "slurm-setup: not root or no apt-get; the slurm tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
