#!/usr/bin/env bash
# One BAM over N tasks, timed: `bamflow plan` beside one `bamflow convert` of the same file
# (goal: the plan under 20% of the conversion), then N tasks run THREADS at a time on the same
# cores plus `bamflow commit`, beside the single conversion. Checks the committed dataset with
# `bamflow verify`. Ratios, not seconds.
#
#   bench/split.sh                                            # shared corpus short reads
#   INPUT=/tmp/peers/data/long.bam TASKS="2 8" bench/split.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-/tmp/peers}
INPUT=${INPUT:-$PEERS/data/short.bam}
TASKS=${TASKS:-"2 4 16"}
THREADS=${THREADS:-$(nproc)}
cargo build --release --quiet --bins
bin=$PWD/target/release/bamflow
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

seconds() { # command... → wall seconds
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

# N tasks, one worker each, at most THREADS at once (a 2-core array job), then the commit.
run_tasks() { # tasks plan out
  local tasks=$1 plan=$2 out=$3
  seq 0 $((tasks - 1)) | xargs -P "$THREADS" -I{} "$bin" convert "$INPUT" "$out" --plan "$plan" --task {} --threads 1
  "$bin" commit "$out" --plan "$plan"
}

single=$(seconds "$bin" convert "$INPUT" "$scratch/single" --threads "$THREADS")
printf '%s: %s bytes, one convert %.2f s on %s threads\n' "$(basename "$INPUT")" "$(stat -c %s "$INPUT")" "$single" "$THREADS"
printf '%6s %10s %12s %10s %14s %s\n' tasks "plan s" "plan÷conv." "tasks s" "tasks÷conv." verified
for n in $TASKS; do
  plan=$scratch/plan-$n.json
  out=$scratch/out-$n
  planned=$(seconds "$bin" plan "$INPUT" --tasks "$n" -o "$plan" --threads "$THREADS")
  tasks=$(seconds run_tasks "$n" "$plan" "$out")
  if "$bin" verify "$out" "$INPUT" --threads "$THREADS" >/dev/null 2>&1; then same=yes; else same=NO; fi
  printf '%6d %10.2f %12.2f %10.2f %14.2f %s\n' "$n" "$planned" "$(echo "$planned / $single" | bc -l)" \
    "$tasks" "$(echo "$tasks / $single" | bc -l)" "$same"
  rm -rf "$out"
done
