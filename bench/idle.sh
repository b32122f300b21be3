#!/usr/bin/env bash
# What an idle daemon costs: runs the release daemon (default settings: 10 s rescans, 5 s
# settle) for DURATION seconds (default 60) in each of three states and prints, per state,
# its CPU share of one core and the rescans it made, by reason. Goal: under 1% of a core, and
# no event rescans while nothing changes.
#
#   bench/idle.sh
#   DURATION=600 bench/idle.sh
#
# States: an empty inbox; after one conversion, with a cut-short BAM waiting for its EOF
# block; with 1,000 more files in done/.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-60}
. bench/daemon.sh

mkdir -p "$dir/inbox"
cat >"$dir/bamflow.toml" <<EOF
[daemon]
state_dir = "$dir/state"
metrics_listen = "127.0.0.1:0"

[[watch]]
name = "idle"
path = "$dir/inbox"
settle_seconds = 5
output = "$dir/outbox/{stem}"
EOF
start_daemon "$dir/bamflow.toml" "$dir/daemon.log"

ticks_per_second=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rescans() { metric "bamflow_watch_rescans_total{reason=\"$1\"}"; }

printf '%-44s %8s %10s %14s %16s\n' state seconds cpu_share event_rescans interval_rescans
measure() { # label
  local t0 e0 i0 t1 e1 i1
  t0=$(cpu_ticks); e0=$(rescans event); i0=$(rescans interval)
  sleep "$DURATION"
  t1=$(cpu_ticks); e1=$(rescans event); i1=$(rescans interval)
  awk -v l="$1" -v d="$DURATION" -v t=$((t1 - t0)) -v hz="$ticks_per_second" \
    -v e=$((e1 - e0)) -v i=$((i1 - i0)) \
    'BEGIN { printf "%-44s %8d %9.2f%% %14d %16d\n", l, d, 100 * t / hz / d, e, i }'
}

sleep 2
measure "empty inbox"

"$bin/bamgen" "$dir/sample.bam" --records 20000 >/dev/null
cp "$dir/sample.bam" "$dir/inbox/one.bam"
head -c "$(($(stat -c %s "$dir/sample.bam") / 2))" "$dir/sample.bam" >"$dir/inbox/cut.bam"
for _ in $(seq 300); do [ -e "$dir/inbox/done/one.bam" ] && break; sleep 0.1; done
sleep 2
measure "after one conversion, one file waiting"

for i in $(seq 1000); do cp "$dir/sample.bam" "$dir/inbox/done/old-$i.bam"; done
sleep 2
measure "and 1,000 files in done/"
