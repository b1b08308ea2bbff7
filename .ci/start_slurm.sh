#!/usr/bin/env bash
# Install and start a single-node Slurm cluster on this host (as root), for the Slurm tests of `toolkit ablate`.
#
# Debian's slurm-wlm and munge; one `debug` partition holding this host; no accounting, no cgroups
# (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none); munged, slurmctld and slurmd run as root-started
# daemons (no systemd needed). Idempotent: quick when Slurm is already up with this configuration.
# Never fails the CI: when Slurm cannot start it prints why and exits 0; the Slurm tests then skip with a reason.
set -u

log() { echo "start_slurm: $*"; }
give_up() {
    log "$*"
    log "Slurm is not available; the Slurm tests will skip"
    exit 0
}

[ "$(id -u)" = 0 ] || give_up "must run as root to install and start Slurm daemons"

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
HOST=$(hostname -s)

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || give_up "no apt-get: install slurm-wlm and munge by hand"
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq >/dev/null 2>&1 || give_up "apt-get update failed"
    timeout 600 apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 ||
        give_up "apt-get install slurm-wlm munge failed"
fi

# --- munge: a key and a running munged -------------------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force >/dev/null 2>&1 || give_up "munged did not start"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || give_up "munge does not answer"
fi

# --- slurm.conf for this host ----------------------------------------------------------------------------------
CPUS=$(nproc)
# RealMemory as slurmd measures it (a configured value above it would drain the node)
MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
MEM=${MEM:-1000}
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
NEW_CONF=$(mktemp)
cat >"$NEW_CONF" <<EOF
# written by .ci/start_slurm.sh: a single-node cluster for the toolkit's Slurm tests
ClusterName=toolkit-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# look at pending (and requeued) jobs every 2 s instead of every 30-60 s
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
KillWait=5
# a requeued job waits for the credential lifetime before it starts again (default 120 s)
AuthInfo=cred_expire=10
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

stop_daemon() {  # stop the daemon whose pid file we configured (never by name)
    local pidfile=$1
    local pid
    pid=$(cat "$pidfile" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
}

if ! cmp -s "$NEW_CONF" "$CONF"; then
    log "writing $CONF ($HOST, $CPUS CPUs, ${MEM} MB, partition debug)"
    stop_daemon /run/slurmd.pid
    stop_daemon /run/slurmctld.pid
    cp "$NEW_CONF" "$CONF"
fi
rm -f "$NEW_CONF"

running() { [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
if ! running /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld >/dev/null 2>&1 || give_up "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
fi
if ! running /run/slurmd.pid; then
    log "starting slurmd"
    slurmd >/dev/null 2>&1 || give_up "slurmd did not start (see /var/log/slurm/slurmd.log)"
fi

# --- wait until the node takes jobs ----------------------------------------------------------------------------
for _ in $(seq 60); do
    STATE=$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case "$STATE" in
    idle* | mixed* | allocated* | completing*) log "Slurm is up: node $HOST $STATE, partition debug"; exit 0 ;;
    down* | drain* | fail*) timeout 5 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 ;;
    esac
    sleep 0.5
done
give_up "node $HOST did not become idle (state: ${STATE:-unknown}; see /var/log/slurm/)"
