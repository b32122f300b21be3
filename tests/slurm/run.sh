#!/usr/bin/env bash
# Runs examples/slurm against a real single-node Slurm started here (Debian's slurm-wlm):
# slurmctld and slurmd on free ports with a private config and spool (auth/none: one host,
# nothing to authenticate), then submit.sh on a generated BAM in 5 tasks; checks the commit
# job published a dataset that `bamflow verify` finds identical to the BAM, and that every
# task's log is there. Stops the daemons whatever happens.
#
#   tests/slurm/run.sh                          # after cargo build (scripts/test.sh runs it)
#   BIN=target/release tests/slurm/run.sh       # a release build
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(realpath "${BIN:-$root/target/debug}")
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
host=$(hostname -s)
mkdir -p "$work/state" "$work/spool" "$work/jobs"
cat >"$work/slurm.conf" <<CONF
ClusterName=bamflowtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=$(id -un)
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$work/slurm.conf
slurmctld -D -c -i -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  sinfo -h -o %t 2>/dev/null | grep -q idle && break
  sleep 0.2
done
sinfo -h -o %t | grep -q idle || { echo "slurm did not start" >&2; cat "$work"/*.log >&2; exit 1; }

"$bin/bamgen" "$work/in.bam" --records 20000 --seed 5 >/dev/null
cd "$work/jobs"
commit=$(BAMFLOW="$bin/bamflow" "$root/examples/slurm/submit.sh" "$work/in.bam" "$work/out" 5 \
  --part-records 1500 2>/dev/null)
for _ in $(seq 600); do
  [ -z "$(squeue -h -o %i)" ] && break
  sleep 0.2
done
[ -z "$(squeue -h -o %i)" ] || { echo "jobs still queued: $(squeue)" >&2; exit 1; }

logs=$(ls "$work/jobs" | grep -c '^bamflow-task-' || true)
[ "$logs" = 5 ] || { echo "expected 5 task logs, found $logs" >&2; exit 1; }
[ -f "$work/jobs/bamflow-commit-$commit.log" ] || { echo "no commit log" >&2; exit 1; }
[ -f "$work/out/_SUCCESS" ] || { echo "no dataset" >&2; cat "$work"/jobs/*.log >&2; exit 1; }
"$bin/bamflow" verify "$work/out" "$work/in.bam"
tasks=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tasks"])' "$work/out/_manifest.json")
[ "$tasks" = 5 ] || { echo "manifest says $tasks tasks" >&2; exit 1; }
echo "tests/slurm/run.sh: 5 array tasks and the commit job published a verified dataset"
