#!/usr/bin/env bash
# A real single-node SLURM on 127.0.0.1 for tests: munge, a private MariaDB, slurmdbd, slurmctld, slurmd.
#
#   scripts/slurm_local.sh install          apt-get the Debian packages (once per machine; needs root)
#   scripts/slurm_local.sh start DIR        write configs under DIR, start every daemon, wait for the node idle
#   scripts/slurm_local.sh stop DIR         stop the daemons started for DIR, by their own pids
#   scripts/slurm_local.sh env DIR          print `export SLURM_CONF=...` for the cluster in DIR
#
# `start` is idempotent: when DIR's daemons are alive and the node answers, it only prints the env.
# Every daemon listens on loopback; ports are picked free at first start and kept in DIR/ports.
set -euo pipefail

PKGS="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
cmd="${1:-}"
dir="${2:-}"

die() { echo "slurm_local: $*" >&2; exit 1; }

install_pkgs() {
  local missing=()
  for bin in slurmctld slurmd slurmdbd sbatch munged mariadbd; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; run as root: apt-get install -y $PKGS"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # a temporary policy-rc.d keeps the packages' own services from starting: this script starts what it needs
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
  fi
  local rc=0
  apt-get install -y -qq $PKGS >/dev/null || rc=$?
  [ "$own_policy" -eq 1 ] && rm -f "$policy"
  return "$rc"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what (logs in $dir/log)"
    sleep 0.2
  done
}

write_configs() {
  mkdir -p "$dir"/{log,run,state,spool,db,munge,gres}
  chmod 700 "$dir/munge"
  if [ ! -f "$dir/ports" ]; then
    echo "CTLD=$(free_port) SLURMD=$(free_port) DBD=$(free_port) MYSQL=$(free_port)" | tr ' ' '\n' > "$dir/ports"
  fi
  # shellcheck disable=SC1091
  . "$dir/ports"
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  # two fake GPUs for scheduling tests: gres File= entries are symlinks to /dev/null (no real device)
  ln -sf /dev/null "$dir/gres/fakegpu0"; ln -sf /dev/null "$dir/gres/fakegpu1"
  cat > "$dir/slurm.conf" <<EOF
ClusterName=sllm
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD
SlurmdPort=$SLURMD
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MinJobAge=300
MailProg=/bin/true
KillWait=2
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=localhost Name=gpu File=$dir/gres/fakegpu[0-1]
EOF
  cat > "$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD
SlurmUser=root
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$dir/slurmdbd.conf"
}

MUNGE_SOCKET=/run/munge/munge.socket.2  # slurm's clients (sacctmgr) use munge's default socket whatever AuthInfo says

start_munge() {
  alive "$dir/run/munged.pid" && return 0
  munge -n >/dev/null 2>&1 && return 0  # a munged already serves the default socket: share it
  mkdir -p /run/munge
  [ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
  chmod 400 "$dir/munge/munge.key"
  munged --force --key-file="$dir/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
  wait_for 10 munged munge -n
}

start_mariadb() {
  alive "$dir/run/mariadb.pid" && return 0
  if [ ! -d "$dir/db/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$dir/db" --user=root --auth-root-authentication-method=normal \
      --skip-test-db >"$dir/log/mariadb-install.log" 2>&1
  fi
  (setsid mariadbd --no-defaults --datadir="$dir/db" --socket="$dir/run/mysql.sock" --port="$MYSQL" \
    --bind-address=127.0.0.1 --user=root --pid-file="$dir/run/mariadb.pid" --skip-name-resolve \
    --innodb-buffer-pool-size=64M --log-error="$dir/log/mariadb.log" </dev/null >/dev/null 2>&1 &)
  wait_for 30 mariadb mariadb-admin --no-defaults --socket="$dir/run/mysql.sock" -uroot ping
}

start_slurm() {
  export SLURM_CONF="$dir/slurm.conf"
  if ! alive "$dir/run/slurmdbd.pid"; then
    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -i list cluster
  fi
  sacctmgr -i list cluster format=cluster -n | grep -qw sllm || sacctmgr -i add cluster sllm >/dev/null
  if ! alive "$dir/run/slurmctld.pid"; then
    slurmctld -f "$dir/slurm.conf"
    wait_for 30 slurmctld scontrol ping
  fi
  if ! alive "$dir/run/slurmd.pid"; then
    slurmd -f "$dir/slurm.conf" -N localhost
  fi
  wait_for 60 "node localhost idle" sh -c "sinfo -h -n localhost -o %t | grep -Eq '^(idle|mix|alloc)'"
}

stop_all() {
  for d in slurmd slurmctld slurmdbd mariadb munged; do
    local pidf="$dir/run/$d.pid"
    if alive "$pidf"; then
      local pid; pid=$(cat "$pidf")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

case "$cmd" in
  install) install_pkgs ;;
  start)
    [ -n "$dir" ] || die "usage: $0 start DIR"
    dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
    install_pkgs
    write_configs
    start_munge
    start_mariadb
    start_slurm
    echo "export SLURM_CONF=$dir/slurm.conf"
    ;;
  stop)
    [ -n "$dir" ] || die "usage: $0 stop DIR"
    stop_all
    ;;
  env) echo "export SLURM_CONF=$dir/slurm.conf" ;;
  *) die "usage: $0 install | start DIR | stop DIR | env DIR" ;;
esac
