#!/usr/bin/env bash
# Install a single-node SLURM (slurm-wlm + munge) and GNU parallel from Debian's packages.
# Idempotent: does nothing when everything is already installed. Needs root (or sudo).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# slurmctld/slurmd come from slurm-wlm; munged from munge; parallel is GNU parallel.
want_pkgs=(slurm-wlm munge parallel)
want_cmds=(slurmctld slurmd srun sbatch sinfo squeue scontrol munged mungekey parallel)

missing=0
for c in "${want_cmds[@]}"; do
    if ! command -v "$c" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$c" ]; then
        missing=1
        break
    fi
done

if [ "$missing" -eq 0 ]; then
    echo "install.sh: slurm-wlm, munge and parallel already installed"
    exit 0
fi

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${want_pkgs[@]}"
echo "install.sh: installed ${want_pkgs[*]}"
