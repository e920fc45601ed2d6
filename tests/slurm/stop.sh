#!/usr/bin/env bash
# Stops the one-node Slurm that tests/slurm/start.sh started: cancels this cluster's jobs and waits
# for them, then stops slurmd, slurmctld and munged by their pid files (never by name). Keeps the
# state, config and key; `--purge` also deletes the cluster folder. Same knobs as start.sh.
set -euo pipefail

dir="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/covseg-slurm}"
purge=0
[ "${1:-}" = "--purge" ] && purge=1
log() { echo "stop-slurm: $*" >&2; }

[ -d "$dir" ] || { log "no cluster in $dir"; exit 0; }
export SLURM_CONF="$dir/etc/slurm.conf"

alive() { # pid comm
  local state comm
  [[ "$1" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$1/stat" ] || return 1
  state="$(sed -E 's/^.*\) ([A-Z]).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
  case "$state" in Z|X|"") return 1 ;; esac
  comm="$(cat "/proc/$1/comm" 2>/dev/null || true)"
  [ "$comm" = "$2" ]
}

# Jobs first: an orphaned job step outlives slurmd.
if [ -f "$SLURM_CONF" ] && scontrol ping 2>/dev/null | grep -q "is UP"; then
  jobs="$(squeue -h -o %A 2>/dev/null | sort -u || true)"
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while [ -n "$(squeue -h -o %A 2>/dev/null || true)" ] && [ "$SECONDS" -lt "$deadline" ]; do
      sleep 0.2
    done
  fi
fi

for daemon in slurmd slurmctld munged; do
  pidfile="$dir/run/$daemon.pid"
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if alive "$pid" "$daemon"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 20))
    while alive "$pid" "$daemon"; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "$daemon ($pid) ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
        break
      fi
      sleep 0.05
    done
    log "$daemon stopped"
  fi
  rm -f "$pidfile"
done
rm -f "$dir/munge/munge.socket.2" "$dir/munge/munge.socket.2.lock"
if [ "$purge" -eq 1 ]; then
  rm -rf "$dir"
  log "removed $dir"
fi
