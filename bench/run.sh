#!/usr/bin/env bash
# One command: build realistic inputs deterministically, then print, for each, bamflow beside
# samtools on the same file in one run — wall and CPU time, records/s, peak RSS, output size —
# with the ratios. Quote the ratios: machines are noisy.
#
#   bench/run.sh                 # short (2M records), long, unaligned; all cores
#   SCALE=4 bench/run.sh         # four times the records (memory must stay flat)
#   THREADS=2 bench/run.sh
#
# Needs samtools and GNU time (apt-get install samtools time). Inputs are cached in
# $BENCH_DIR (default target/bench) and reused when their generator arguments match.
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/common.sh

cargo build --release --quiet -p bamflow -p bamflow-tests

# name kind records extra-args
inputs=(
  "short short $((2000000 * SCALE))"
  "long long $((20000 * SCALE)) --max-read-length 300000"
  "unaligned unaligned $((2000000 * SCALE))"
)


printf '%-10s %-26s %8s %8s %6s %12s %9s %10s\n' input tool wall_s cpu_s cpu/w records/s rss_MB out/bam
for spec in "${inputs[@]}"; do
  read -r name kind records extra <<<"$spec"
  bam="$BENCH_DIR/$name-$records.bam"
  [ -s "$bam" ] || "$BIN/bamgen" "$bam" --kind "$kind" --records "$records" ${extra:-} >&2
  n=$(samtools view -c -@"$THREADS" "$bam")
  size=$(stat -c %s "$bam")

  row() { # tool wall cpu rss out_bytes
    awk -v t="$1" -v w="$2" -v c="$3" -v r="$4" -v o="$5" -v n="$n" -v s="$size" -v name="$name" \
      'BEGIN { printf "%-10s %-26s %8.2f %8.2f %6.2f %12.0f %9.0f %10s\n", name, t, w, c, c / w, n / w, r / 1024, (o == "" ? "-" : sprintf("%.3f", o / s)) }'
  }
  read -r w c r < <(measure samtools view -c -@"$THREADS" "$bam");               row "samtools view -c -@$THREADS" "$w" "$c" "$r" ""
  read -r sw c r < <(measure samtools view -@"$THREADS" -o /dev/null "$bam");      row "samtools view -@$THREADS" "$sw" "$c" "$r" ""
  out="$BENCH_DIR/$name.parquet.d"; rm -rf "$out"
  read -r bw c r < <(measure "$BIN/bamflow" convert --threads "$THREADS" "$bam" "$out")
  row "bamflow convert" "$bw" "$c" "$r" "$(du -sb "$out" | cut -f1)"
  awk -v b="$bw" -v s="$sw" -v name="$name" 'BEGIN { printf "%-10s bamflow / samtools view -@N wall: %.2fx\n", name, b / s }'
  # The busiest serial thread's CPU time bounds the speed-up: CPU over it is the core count
  # past which adding workers stops helping.
  awk -v c="$c" -v name="$name" '
    /"serial_cpu_seconds"/ { on = 1; next }
    on && /}/ { on = 0 }
    on { gsub(/[",:]/, " "); if ($2 > max) { max = $2; who = $1 } }
    END { if (max > 0) printf "%-10s busiest serial thread: %s, %.2f s of CPU; CPU / that: %.0f cores\n", name, who, max, c / max }
  ' "$out/_manifest.json"
done
