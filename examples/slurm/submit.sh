#!/usr/bin/env bash
# Converts one BAM over a Slurm array job (DESIGN §11): plans here, submits one array task per
# split (--requeue: a preempted or failed task reruns and resumes its checkpoint) and a commit
# job that runs once every task has succeeded. Prints the commit job's id.
#
#   examples/slurm/submit.sh IN.bam OUT_DIR TASKS [convert options, e.g. --tags NM:i]
#
# IN.bam, OUT_DIR and the plan (OUT_DIR.plan.json) must be on storage every node sees.
# BAMFLOW names the binary (default: bamflow on PATH); sbatch options such as --partition
# or --account go in SBATCH_* environment variables (SBATCH_PARTITION, SBATCH_ACCOUNT).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 IN.bam OUT_DIR TASKS [convert options]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
BAM=$(realpath "$1")
OUT=$(realpath -m "$2")
tasks=$3
shift 3
BAMFLOW=${BAMFLOW:-bamflow}
PLAN="$OUT.plan.json"
# The options every task converts with: the plan records them and refuses others.
BAMFLOW_ARGS="$*"
export BAM OUT PLAN BAMFLOW BAMFLOW_ARGS

# One pass over the file on this node's cores (about a sixth of a conversion's time).
"$BAMFLOW" plan "$BAM" --tasks "$tasks" -o "$PLAN" "$@"
array=$(sbatch --parsable --export=ALL --array="0-$((tasks - 1))" "$here/task.sbatch")
sbatch --parsable --export=ALL --dependency="afterok:${array%%;*}" --kill-on-invalid-dep=yes \
  "$here/commit.sbatch"
