#!/usr/bin/env bash
# A real single-node SLURM (with accounting) on this machine, for the `slurm` tests and for
# trying `python run.py -m hydra/launcher=slurm ...` without a cluster. Debian 12, as root.
#
#   scripts/local_slurm.sh start    install the Debian packages if missing, start the daemons,
#                                   run a test job; prints "local SLURM ready" when usable
#   scripts/local_slurm.sh stop     cancel the cluster's jobs, stop the daemons this script
#                                   started (and nothing else)
#   scripts/local_slurm.sh status
#
# Daemons run in the background without systemd or cgroups. submitit learns that a job died
# only through `sacct`, so accounting (slurmdbd on a private MariaDB) is always on.
# State, logs and the PIDs of what we started: $LOCAL_SLURM_DIR (default /tmp/ewcexp-slurm).
# Config: /etc/slurm/{slurm,cgroup,slurmdbd}.conf; a file there that this script did not
# write is never overwritten (start refuses instead).
set -euo pipefail

DIR=${LOCAL_SLURM_DIR:-/tmp/ewcexp-slurm}
NODE=$(hostname -s)
# at least 4 CPUs advertised, so that hydra/launcher=slurm's default cpus_per_task=4 fits
# the node (SlurmdParameters=config_overrides lets a node claim more than it has)
CPUS=${LOCAL_SLURM_CPUS:-$(($(nproc) > 4 ? $(nproc) : 4))}
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
DB_PORT=${LOCAL_SLURM_DB_PORT:-3307}
TAG="# written by ewcexp scripts/local_slurm.sh"
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stopped in reverse

say() { echo "[local-slurm] $*"; }
fail() { echo "[local-slurm] error: $*" >&2; exit 1; }

# alive PID EXE: the process runs and is that binary (a recycled PID is not ours)
alive() {
    [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat") != Z ]] &&
        [[ $(readlink "/proc/$1/exe") == "$(readlink -f "$2")" ]]
}
ours() {  # ours NAME: prints the recorded PID of NAME if it still runs
    local file=$DIR/pids/$1.pid
    [[ -f $file ]] && alive "$(<"$file")" "/usr/sbin/$1" && cat "$file"
}
wait_until() {  # wait_until WHAT COMMAND...: up to 60 s
    local what=$1 deadline=$((SECONDS + 60))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "gave up waiting for $what after 60 s (logs in $DIR/log)"
        sleep 0.2
    done
}
CHANGED=0
write_config() {  # write_config PATH MODE CONTENT; sets CHANGED=1 when the content changes
    if [[ -f $1 ]] && ! grep -qF "$TAG" "$1"; then
        fail "$1 exists and was not written by this script; refusing to replace it"
    fi
    [[ -f $1 && $(cat "$1") == "$(printf '%s\n%s' "$TAG" "$3")" ]] && return 0
    CHANGED=1
    printf '%s\n%s\n' "$TAG" "$3" >"$1.new"
    chmod "$2" "$1.new"
    mv "$1.new" "$1"
}

start() {
    [[ $(id -u) == 0 ]] || fail "must run as root (it installs packages and starts daemons)"
    local packages=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client)
    local missing=()
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
            missing+=("$package")
    done
    mkdir -p "$DIR"/{pids,log,state,spool,db,dbrun}
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends "${missing[@]}"; } >>"$DIR/log/apt.log" 2>&1 ||
            fail "apt-get failed, see $DIR/log/apt.log"
    fi
    [[ -s $DIR/dbpass ]] || { head -c 24 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$DIR/dbpass"; }
    local password
    password=$(<"$DIR/dbpass")
    mkdir -p /etc/slurm
    write_config /etc/slurm/slurm.conf 644 "ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/pids/slurmctld.daemon
SlurmdPidFile=$DIR/pids/slurmd.daemon
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    # one GPU in name only (/dev/null as its device): a job may ask for it as on a GPU node,
    # and finds no CUDA there (the test of a device=cuda multirun sent from a CPU machine)
    write_config /etc/slurm/gres.conf 644 "NodeName=$NODE Name=gpu File=/dev/null"
    # slurmd probes cgroups even when it uses none; naming v1 skips the probe
    write_config /etc/slurm/cgroup.conf 644 "CgroupPlugin=cgroup/v1"
    write_config /etc/slurm/slurmdbd.conf 600 "AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/pids/slurmdbd.daemon
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$password"
    if ((CHANGED)) && ours slurmctld >/dev/null; then
        say "configuration changed: restarting the daemons"
        stop
    fi

    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
        install -d -o munge -g munge /run/munge /var/lib/munge /var/log/munge
        runuser -u munge -- /usr/sbin/munged
        wait_until munged bash -c 'munge -n | unmunge'
        cp /run/munge/munged.pid "$DIR/pids/munged.pid"
    fi

    local socket=$DIR/dbrun/mysqld.sock
    chown mysql:mysql "$DIR/db" "$DIR/dbrun"
    if ! ours mariadbd >/dev/null; then
        [[ -d $DIR/db/mysql ]] || mariadb-install-db --no-defaults --user=mysql \
            --datadir="$DIR/db" --skip-test-db >>"$DIR/log/mariadb-install.log" 2>&1
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DIR/db" \
            --socket="$socket" --port="$DB_PORT" --bind-address=127.0.0.1 \
            --pid-file="$DIR/dbrun/mariadbd.pid" --log-error="$DIR/dbrun/mariadbd.log" \
            --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
        wait_until "MariaDB (log: $DIR/dbrun/mariadbd.log)" \
            mariadb-admin --no-defaults -S "$socket" -uroot ping
        cp "$DIR/dbrun/mariadbd.pid" "$DIR/pids/mariadbd.pid"
    fi
    mariadb --no-defaults -S "$socket" -uroot -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
        ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    local daemon check
    for daemon in slurmdbd slurmctld slurmd; do
        ours "$daemon" >/dev/null && continue
        case $daemon in
            slurmdbd) check="sacctmgr -n list cluster" ;;
            slurmctld) check="scontrol ping | grep -q UP" ;;
            slurmd) check="test -s $DIR/pids/slurmd.daemon" ;;
        esac
        rm -f "$DIR/pids/$daemon.daemon"
        "/usr/sbin/$daemon" </dev/null >>"$DIR/log/$daemon.out" 2>&1
        wait_until "$daemon" bash -c "$check"
        cp "$DIR/pids/$daemon.daemon" "$DIR/pids/$daemon.pid"
    done
    [[ $(sinfo -h -o %T) =~ drain|down ]] && scontrol update NodeName="$NODE" State=RESUME
    wait_until "node $NODE" bash -c "sinfo -h -o %T | grep -Eq '^(idle|mixed|allocated)'"
    local job
    job=$(timeout 60 srun -t 1 -J local-slurm-check bash -c 'echo $SLURM_JOB_ID') ||
        fail "the test job did not run"
    wait_until "job $job in sacct" bash -c "sacct -n -X -P -j $job -o State | grep -qx COMPLETED"
    say "local SLURM ready: node $NODE, $CPUS CPUs, partition debug, test job $job completed"
}

stop() {
    [[ -d $DIR/pids ]] || { say "nothing to stop"; return 0; }
    if ours slurmctld >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %A | tr '\n' ' ')
        [[ -z ${jobs// /} ]] || { say "cancelling jobs $jobs"; scancel $jobs || true; sleep 1; }
    fi
    local i name pid
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        name=${DAEMONS[i]}
        pid=$(ours "$name") || continue
        kill -TERM "$pid"
        for _ in $(seq 150); do alive "$pid" "/usr/sbin/$name" || break; sleep 0.2; done
        alive "$pid" "/usr/sbin/$name" && kill -KILL "$pid"
        rm -f "$DIR/pids/$name.pid"
        say "stopped $name ($pid)"
    done
}

status() {
    local name pid
    for name in "${DAEMONS[@]}"; do
        if pid=$(ours "$name"); then say "$name running ($pid)"; else say "$name not started by us"; fi
    done
    command -v sinfo >/dev/null && sinfo || true
}

case ${1:-} in
    start | stop | status) "$1" ;;
    *) fail "usage: $0 start|stop|status" ;;
esac
