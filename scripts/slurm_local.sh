#!/usr/bin/env bash
# A one-node Slurm on this machine, for the `slurm` tests (tests/_slurm.py) and for trying the
# launch/slurm scripts by hand. Needs root (or passwordless sudo): Debian's slurm-wlm and munge
# are installed when missing (apt-get update only if the install needs it).
#   scripts/slurm_local.sh start    install if needed, write the config, start munged, slurmctld
#                                   and slurmd, wait until the node is idle; prints the line
#                                   `export SLURM_CONF=...` the client commands need
#   scripts/slurm_local.sh stop     cancel its jobs, stop the daemons it started (pid files)
#   scripts/slurm_local.sh status   exit 0 when its controller answers and the node is up
# Exit 3: this machine cannot get Slurm (not root, no apt-get, or the install failed).
# Everything lives in GIANT_SLURM_DIR (default /tmp/giant-slurm): config, munge key and socket,
# state, spool, logs, pid files. The node is this host (`hostname -s`, which must resolve) with
# GIANT_SLURM_CPUS CPUs (default: max(nproc, 4); more than the cores is fine for tests, jobs then
# share them) and two GRES `gpu` entries backed by /dev/null and /dev/zero, so `--gpus-per-node=2`
# is accepted on a machine without GPUs. Short timeouts: a requeued job starts again ~6 s later
# (cred_expire), a job's processes get 3 s between SIGTERM and SIGKILL (KillWait).
set -euo pipefail

DIR=${GIANT_SLURM_DIR:-/tmp/giant-slurm}
PORT=${GIANT_SLURM_PORT:-6817}   # slurmctld; slurmd listens on PORT+1
CONF=$DIR/slurm.conf
NODE=$(hostname -s)

die() { echo "slurm_local.sh: $*" >&2; exit 1; }
cannot_install() { echo "slurm_local.sh: cannot install: $*" >&2; exit 3; }  # tests skip on 3

# A pid file's process, if it is still the daemon that wrote it (a reused pid is not ours).
alive() {
  local pid_file=$1 name=$2 pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [[ "$(cat "/proc/$pid/comm")" == "$name"* ]] && echo "$pid"
}

install_packages() {
  local missing=()
  command -v slurmctld > /dev/null || missing+=(slurm-wlm)
  command -v munged > /dev/null || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get > /dev/null || cannot_install "${missing[*]} missing and no apt-get"
  echo "slurm_local.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" > "$DIR/apt.log" 2>&1 \
    || { apt-get update -q >> "$DIR/apt.log" 2>&1 \
         && apt-get install -y -q "${missing[@]}" >> "$DIR/apt.log" 2>&1; } \
    || cannot_install "apt-get install ${missing[*]} failed (see $DIR/apt.log)"
}

write_config() {
  local cpus=${GIANT_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}
  getent hosts "$NODE" > /dev/null || die "this host's name $NODE does not resolve (jobs rendezvous on it)"
  mkdir -p "$DIR"/{munge,state,spool,log}
  chmod 700 "$DIR/munge"
  cat > "$CONF" <<EOF
# written by scripts/slurm_local.sh: a one-node test cluster; not for production
ClusterName=giant
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it starts again (default 120 s)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
# a job whose begin time passed (a requeued one) is looked at within 2 s, not 60
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
# finished jobs stay visible to scontrol for 10 min (no accounting database here)
MinJobAge=600
MailProg=/bin/true
KillWait=3
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Gres=gpu:2 State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=/dev/null
NodeName=$NODE Name=gpu File=/dev/zero
EOF
  [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" \
    || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
}

node_state() {
  SLURM_CONF=$CONF sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n 1
}

start() {
  mkdir -p "$DIR"
  if status > /dev/null; then  # already up (jobs may be running on it): leave it as it is
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || cannot_install "needs root (apt-get; the daemons run as root)"
  install_packages
  stop_daemons  # a half-started earlier attempt
  write_config
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" || die "munged did not start (see $DIR/log/munged.log)"
  # -c: forget the jobs of an earlier start of this test cluster
  slurmctld -f "$CONF" -c || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
  slurmd -f "$CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"
  local state=""
  for _ in $(seq 120); do
    state=$(node_state)
    [ "$state" = idle ] && { echo "export SLURM_CONF=$CONF"; return 0; }
    sleep 0.5
  done
  die "node $NODE is '${state:-unknown}', not idle, after 60 s (see $DIR/log/)"
}

stop_daemons() {
  local pid
  for entry in slurmd:slurmd.pid slurmctld:slurmctld.pid munged:munge/munged.pid; do
    pid=$(alive "$DIR/${entry#*:}" "${entry%%:*}") || continue
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2> /dev/null || true
    rm -f "$DIR/${entry#*:}"
  done
}

stop() {
  if alive "$DIR/slurmctld.pid" slurmctld > /dev/null; then
    SLURM_CONF=$CONF scancel --full --quiet --user="$(id -un)" 2> /dev/null || true
    for _ in $(seq 50); do  # let slurmd end the jobs' processes before it goes
      [ -z "$(SLURM_CONF=$CONF squeue --noheader --states=RUNNING,COMPLETING --format=%i 2>/dev/null)" ] \
        && break
      sleep 0.2
    done
  fi
  stop_daemons
}

status() {
  local ctl slurmd state
  ctl=$(alive "$DIR/slurmctld.pid" slurmctld) || { echo "slurmctld not running"; return 1; }
  slurmd=$(alive "$DIR/slurmd.pid" slurmd) || { echo "slurmd not running"; return 1; }
  state=$(node_state)
  echo "slurmctld $ctl, slurmd $slurmd, node $NODE ${state:-unknown}; export SLURM_CONF=$CONF"
  case "$state" in idle*|mixed*|alloc*|completing*) return 0 ;; *) return 1 ;; esac
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: scripts/slurm_local.sh start|stop|status" >&2; exit 2 ;;
esac
