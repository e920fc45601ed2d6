#!/usr/bin/env bash
# Starts a one-node Slurm on this machine for covseg's Slurm tests and benchmarks: munged,
# slurmctld and slurmd, every file of theirs (config, munge key and socket, state, spool, logs, pid
# files) under one cluster folder. Installs Debian's packages first when they are missing (root).
#
#   eval "$(tests/slurm/start.sh)"    # stdout is only `export SLURM_CONF=...`; logs go to stderr
#
# Idempotent: a daemon already running is left alone, slurm.conf is rewritten only when its text
# changes. Knobs: SLURM_LOCAL_DIR (default $TMPDIR/covseg-slurm), SLURM_LOCAL_TIMEOUT (60 s),
# SLURM_LOCAL_CTLD_PORT (6817), SLURM_LOCAL_SLURMD_PORT (6818), SLURM_LOCAL_CPUS (nproc),
# SLURM_LOCAL_MEM_MB (90 % of MemTotal). Stop it with tests/slurm/stop.sh.
set -euo pipefail

dir="${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/covseg-slurm}"
timeout="${SLURM_LOCAL_TIMEOUT:-60}"
ctld_port="${SLURM_LOCAL_CTLD_PORT:-6817}"
slurmd_port="${SLURM_LOCAL_SLURMD_PORT:-6818}"
cpus="${SLURM_LOCAL_CPUS:-$(nproc)}"
mem_mb="${SLURM_LOCAL_MEM_MB:-$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)}"

log() { echo "start-slurm: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root, with every file under $dir)"

tools=(munged munge unmunge slurmctld slurmd sbatch squeue sinfo scontrol scancel)
missing=0
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing=1; done
if [ "$missing" -eq 1 ]; then
  log "installing slurmctld slurmd slurm-client munge"
  # No system daemon may start during the install: policy-rc.d refuses them.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    made_policy=1
  fi
  rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge; } >&2 || rc=$?
  [ "$made_policy" -eq 1 ] && rm -f "$policy"
  [ "$rc" -eq 0 ] || die "apt-get install failed (rc $rc)"
fi

mkdir -p "$dir"/{etc,state,spool,log,run,munge}
chmod 0700 "$dir/state" "$dir/spool"
chmod 0755 "$dir" "$dir/munge"
socket="$dir/munge/munge.socket.2"
[ "${#socket}" -lt 108 ] || die "the munge socket path is too long for a Unix socket: $socket (set SLURM_LOCAL_DIR)"
conf="$dir/etc/slurm.conf"
export SLURM_CONF="$conf"

# A pid file names a live daemon when the process exists, is not a zombie and has the right name.
alive() { # pidfile comm
  local pid state comm
  pid="$(cat "$1" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed -E 's/^.*\) ([A-Z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null || true)"
  case "$state" in Z|X|"") return 1 ;; esac
  comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
  [ "$comm" = "$2" ]
}

wait_for() { # what command...
  local what="$1"; shift
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what (logs in $dir/log)"
    sleep 0.1
  done
}

# munge: a private daemon with its own key and socket.
key="$dir/munge/munge.key"
if [ ! -s "$key" ]; then
  head -c 1024 /dev/urandom > "$key"
fi
chmod 0400 "$key"
if ! alive "$dir/run/munged.pid" munged; then
  rm -f "$socket" "$socket.lock"
  munged --socket="$socket" --key-file="$key" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed" --force
  log "munged started"
fi
munge_ok() { munge -S "$socket" -n | unmunge -S "$socket"; }
wait_for munge munge_ok

text="$(cat <<CONF
# Written by covseg's tests/slurm/start.sh: a one-node cluster on localhost.
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
SchedulerParameters=batch_sched_delay=0
MinJobAge=3600
EnforcePartLimits=ALL
ReturnToService=2
SlurmdTimeout=30
MpiDefault=none
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
)"
changed=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$text" ]; then
  printf '%s\n' "$text" > "$conf.tmp"
  mv "$conf.tmp" "$conf"
  changed=1
fi

if alive "$dir/run/slurmctld.pid" slurmctld; then
  if [ "$changed" -eq 1 ]; then
    scontrol reconfigure >&2 || true
    log "slurmctld reconfigured"
  fi
else
  slurmctld
  log "slurmctld started"
fi
ctld_up() { scontrol ping | grep -q "is UP"; }
wait_for slurmctld ctld_up

if ! alive "$dir/run/slurmd.pid" slurmd; then
  slurmd -N localhost
  log "slurmd started"
fi
node_ready() {
  local state
  state="$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1)"
  case "$state" in
    idle|mixed|allocated|completing) return 0 ;;
    drain*|down*|drng*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
  esac
}
wait_for "the node to become idle" node_ready
log "cluster up in $dir"
echo "export SLURM_CONF=$conf"
