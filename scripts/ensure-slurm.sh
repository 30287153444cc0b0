#!/usr/bin/env bash
# Make SLURM (slurmctld, slurmd, sbatch) and munge (munged, mungekey) available for
# the tests that run a one-node SLURM cluster on this machine (tests/slurmcluster.py).
#
# Does nothing when all of them are on PATH (or in /usr/sbin); otherwise, as root,
# installs Debian's slurmctld, slurmd, slurm-client and munge packages with apt-get,
# without starting their services: the tests start their own daemons, with their
# own configuration, and stop them by pid. Exits 1 with a one-line reason when it
# cannot provide them.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
NEEDED="slurmctld slurmd sbatch munged mungekey"

missing() {
    local name out=""
    for name in $NEEDED; do
        command -v "$name" >/dev/null 2>&1 || out="$out $name"
    done
    echo "${out# }"
}

if [ -z "$(missing)" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-slurm: not on PATH: $(missing); installing them needs root (apt-get install slurmctld slurmd slurm-client munge)" >&2
    exit 1
fi
# One install at a time (test processes may ask at once; the lock is on this script, read
# only, so no file is written for it); the next one finds it done.
exec 9<"${BASH_SOURCE[0]}"
flock 9
if [ -z "$(missing)" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-slurm: not on PATH: $(missing); apt-get is not available to install them" >&2
    exit 1
fi

# Debian's postinst scripts start munge and the slurm daemons through invoke-rc.d
# where they can; a policy-rc.d that exits 101 forbids that. Ours is only written
# (and removed) when the machine has none of its own.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# written by ensure-slurm.sh while it installs slurm and munge\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi

daemon_pids() {
    local name
    for name in slurmctld slurmd munged; do
        pgrep -x "$name" || true
    done
}

before=" $(daemon_pids | tr '\n' ' ')"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq slurmctld slurmd slurm-client munge; } >&2; then
    echo "ensure-slurm: 'apt-get install slurmctld slurmd slurm-client munge' failed" >&2
    exit 1
fi

if [ -n "$(missing)" ]; then
    echo "ensure-slurm: installed slurm and munge, but still not on PATH: $(missing)" >&2
    exit 1
fi

# No daemon should be left running by the install: the tests start their own, with
# their own configuration, ports and munge socket. Any that the install started
# anyway (new pids since before it) are stopped by pid.
started=""
for pid in $(daemon_pids); do
    case " $before " in *" $pid "*) ;; *) started="$started $pid" ;; esac
done
if [ -n "$started" ]; then
    echo "ensure-slurm: stopping daemons that the install started:$started" >&2
    kill $started 2>/dev/null || true
fi
exit 0
