#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tests and CI (Debian/Ubuntu, run as root).
#
#   bash tests/slurm/local_cluster.sh start    install (apt) if needed, configure, start, wait for an idle node
#   bash tests/slurm/local_cluster.sh stop     stop the daemons this script started (by PID)
#   bash tests/slurm/local_cluster.sh status   sinfo + squeue
#
# No slurmdbd (so no sacct: profiles must poll with squeue, and finished jobs stay listed for an
# hour via MinJobAge), no cgroups and no systemd: the daemons run in the background and are stopped
# by the PIDs saved under $LLQR_SLURM_STATE. The node gets the machine's real CPU count and memory
# (minus 1 GiB). FAKE_GPUS=n adds n fake GPUs (device files under /dev, which slurmd needs to see).
set -euo pipefail

action=${1:-start}
state=${LLQR_SLURM_STATE:-/var/run/llqr-slurm}
fake_gpus=${FAKE_GPUS:-0}
conf_dir=/etc/slurm
mkdir -p "$state"

log() { echo "[local_cluster] $*"; }

stop_daemons() {  # names to stop (default: all three)
  local name pid
  for name in ${@:-slurmd slurmctld munged}; do
    [[ -f $state/$name.pid ]] || continue
    pid=$(cat "$state/$name.pid")
    if kill "$pid" 2>/dev/null; then log "stopped $name (pid $pid)"; fi
    rm -f "$state/$name.pid"
  done
}

case $action in
  stop) stop_daemons; exit 0 ;;
  status) sinfo; squeue; exit 0 ;;
  start) ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

if [[ $(id -u) != 0 ]]; then
  echo "[local_cluster] error: needs root (installs packages, starts slurmctld/slurmd/munged)" >&2
  exit 1
fi
t0=$(date +%s)
# a second start restarts the SLURM daemons (munged, if ours, keeps running: they need it)
stop_daemons slurmd slurmctld

# --- packages (no slurmdbd: it would need a MariaDB server) ---------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

# --- munge: the key the package created, or a fresh one; munged refuses to run as root ------------
if [[ ! -s /etc/munge/munge.key ]]; then
  head -c 1024 /dev/urandom > /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
  for _ in $(seq 1 10); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.5; done
  cp /run/munge/munged.pid "$state/munged.pid"
fi
(munge -n | unmunge) >/dev/null || { echo "[local_cluster] error: munge does not work" >&2; exit 1; }

# --- slurm.conf from what slurmd detects on this machine -------------------------------------------
host=$(hostname -s)
detected=$(slurmd -C | head -n 1)             # NodeName=<host> CPUs=... RealMemory=... ...
memory=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$detected")
node=$(sed -E -e 's/^NodeName=[^ ]+ //' -e "s/RealMemory=[0-9]+/RealMemory=$((memory - 1024))/" <<<"$detected")
rm -f "$conf_dir/cgroup.conf" "$conf_dir/gres.conf"   # Slurm 22.05 cannot disable cgroups by config: no file at all
gres_types="" node_gres=""
if (( fake_gpus > 0 )); then
  for i in $(seq 0 $((fake_gpus - 1))); do touch "/dev/fakegpu$i"; done
  echo "NodeName=$host Name=gpu File=/dev/fakegpu[0-$((fake_gpus - 1))]" > "$conf_dir/gres.conf"
  gres_types="GresTypes=gpu" node_gres="Gres=gpu:$fake_gpus"
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm
cat > "$conf_dir/slurm.conf" <<CONF
# written by tests/slurm/local_cluster.sh
ClusterName=llqr-local
SlurmctldHost=$host
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/var/run/slurmctld.pid
SlurmdPidFile=/var/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
$gres_types
NodeName=$host $node $node_gres State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

# --- daemons (they put themselves in the background); -c: start from an empty job state -----------
/usr/sbin/slurmctld -c
for _ in $(seq 1 20); do [[ -s /var/run/slurmctld.pid ]] && break; sleep 0.5; done
cp /var/run/slurmctld.pid "$state/slurmctld.pid"
/usr/sbin/slurmd
for _ in $(seq 1 20); do [[ -s /var/run/slurmd.pid ]] && break; sleep 0.5; done
cp /var/run/slurmd.pid "$state/slurmd.pid"
for _ in $(seq 1 30); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)$'; then
    sinfo -o "%P %a %D %t %c %m %G"
    log "cluster up in $(( $(date +%s) - t0 )) s (slurmctld $(cat "$state/slurmctld.pid"), slurmd $(cat "$state/slurmd.pid"))"
    exit 0
  fi
  sleep 1
done
echo "[local_cluster] error: the node did not become idle; see /var/log/slurm/slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
