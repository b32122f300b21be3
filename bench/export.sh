#!/usr/bin/env bash
# Back to BAM, timed: for each input, `bamflow convert`, then `bamflow export` beside
# `samtools view -@N -b` (BAM → BAM, the floor a BAM writer is held to) and `bamflow verify`
# beside the conversion, in one run; then checks the export against the source with
# `samtools view -h --no-PG`. Ratios, not seconds.
#
#   bench/export.sh                                   # a generated 2 M-record short-read BAM
#   INPUTS="/tmp/peers/data/short2m.bam /tmp/peers/data/long.bam" THREADS=2 bench/export.sh
#   TAGS=NM:i,MD:Z,AS:i bench/export.sh               # with promoted tags put back in place
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
tags=()
if [ -n "${TAGS:-}" ]; then tags=(--tags "$TAGS"); fi
cargo build --release --quiet --bins
bin=$PWD/target/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if [ -z "${INPUTS:-}" ]; then
  "$bin/bamgen" "$scratch/short.bam" --records 2000000 --seed 1 >/dev/null
  INPUTS="$scratch/short.bam"
fi

seconds() { # command... → wall seconds
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

printf '%-14s %9s %9s %9s %9s %9s %13s %13s %s\n' input convert export samtools verify records "export÷samt." "verify÷conv." identical
for bam in $INPUTS; do
  name=$(basename "$bam" .bam)
  out=$scratch/$name
  rm -rf "$out"
  convert=$(seconds "$bin/bamflow" convert "$bam" "$out" --threads "$THREADS" "${tags[@]}")
  export=$(seconds "$bin/bamflow" export "$out" "$scratch/$name.exported.bam" --threads "$THREADS")
  samtools=$(seconds samtools view -@"$THREADS" -b -o "$scratch/$name.samtools.bam" "$bam")
  verify=$(seconds "$bin/bamflow" verify "$out" "$bam" --threads "$THREADS")
  records=$(samtools view -c -@"$THREADS" "$bam")
  if cmp -s <(samtools view -h --no-PG "$bam") <(samtools view -h --no-PG "$scratch/$name.exported.bam"); then
    same=yes
  else
    same=NO
  fi
  printf '%-14s %9.2f %9.2f %9.2f %9.2f %9d %13.2f %13.2f %s\n' "$name" "$convert" "$export" "$samtools" "$verify" "$records" \
    "$(echo "$export / $samtools" | bc -l)" "$(echo "$verify / $convert" | bc -l)" "$same"
  rm -rf "$out" "$scratch/$name".*.bam
done
