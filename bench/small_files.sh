#!/usr/bin/env bash
# Small files at once: FILES BAMs of RECORDS short reads (default 170 × 11,500, ~1.7 MB each,
# like amplicon panels or per-sample BAMs) dropped together into a daemon with
# max_concurrent_files = 2 and settle_seconds = 1. Prints files/s, then where each file's time
# goes: the engine's own wall time per file (manifest `seconds`) and its stages' CPU, against the
# wall time each of the two slots spends per file; the difference is the daemon's per-file cost
# (settling, claiming, ledger, filing, fsyncs between conversions).
#
#   bench/small_files.sh
#   FILES=400 RECORDS=5000 bench/small_files.sh
#   PERF=1 bench/small_files.sh        # also perf-records the daemon: target/small_files.perf.data
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-170}
RECORDS=${RECORDS:-11500}
. bench/daemon.sh

mkdir -p "$dir/src" "$dir/inbox"
for i in $(seq 1 "$FILES"); do
  "$bin/bamgen" "$dir/src/s$i.bam" --records "$RECORDS" --seed "$i" >/dev/null
done
cat >"$dir/bamflow.toml" <<EOF
[daemon]
state_dir = "$dir/state"
max_concurrent_files = 2
metrics_listen = "127.0.0.1:0"
[[watch]]
name = "small"
path = "$dir/inbox"
settle_seconds = 1
output = "$dir/lake/{stem}"
EOF
start_daemon "$dir/bamflow.toml" "$dir/daemon.log"
sleep 1
if [ -n "${PERF:-}" ]; then
  perf record -g -o target/small_files.perf.data -p "$pid" 2>/dev/null &
  perf_pid=$!
fi
t0=$(date +%s.%N)
# Hard links made in one go (one `ln`, about 3 ms): the whole backlog appears at once, as a
# copy tool's renames would. A loop of one `ln` per file took 0.34 s to drop 170 files.
ln "$dir"/src/*.bam "$dir/inbox/"
until [ "$(ls "$dir/inbox/done" 2>/dev/null | wc -l)" -ge "$FILES" ]; do sleep 0.05; done
t1=$(date +%s.%N)
[ -n "${PERF:-}" ] && kill -INT "$perf_pid" && wait "$perf_pid" || true
cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat")

python3 - "$dir/lake" "$FILES" "$t0" "$t1" "$cpu" "$(du -cb "$dir"/src/*.bam | tail -1 | cut -f1)" <<'EOF'
import json, os, sys
lake, files, t0, t1, cpu, bam_bytes = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), int(sys.argv[6])
wall = t1 - t0
manifests = [json.load(open(os.path.join(lake, d, "_manifest.json"))) for d in os.listdir(lake)]
assert len(manifests) == files, f"{len(manifests)} datasets for {files} files"
per = lambda key: sum(m[key] for m in manifests) / files
stages = {}
for m in manifests:
    for stage, seconds in m["stage_seconds"].items():
        stages[stage] = stages.get(stage, 0) + seconds / files
slot = 2 * wall / files
print(f"{files} files of {bam_bytes / files / 1e6:.2f} MB: {wall:.2f} s, {files / wall:.1f} files/s; "
      f"daemon CPU {cpu:.2f} s ({1000 * cpu / files:.1f} ms per file)")
print(f"per file, ms: slot wall {1000 * slot:.1f} = engine wall {1000 * per('seconds'):.1f} "
      f"+ outside the engine {1000 * (slot - per('seconds')):.1f}")
print("engine stage CPU per file, ms: " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])))
EOF
