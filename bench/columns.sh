#!/usr/bin/env bash
# What each column costs: converts each input once with every column, for the bytes each column
# takes in the dataset (pyarrow, from the parts' metadata), then once per column alone
# (`--columns NAME`), for the CPU seconds the manifest puts in `decode` and `encode` when only
# that column is built. Prints a Markdown table per input: bytes, share of the output, bytes per
# record, the level used, and decode and encode CPU per million records.
#
#   bench/columns.sh                                   # 2 M generated short reads
#   INPUTS="/tmp/peers/data/short.bam /tmp/peers/data/long.bam" bench/columns.sh
#
# Needs python3 with pyarrow (scripts/test.sh makes target/test-venv, used when present).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
cargo build --release --quiet --bins
python=python3
[ -x target/test-venv/bin/python ] && python=target/test-venv/bin/python

if [ -z "${INPUTS:-}" ]; then
  bam="$BENCH_DIR/short-$((2000000 * SCALE)).bam"
  [ -s "$bam" ] || "$BIN/bamgen" "$bam" --kind short --records $((2000000 * SCALE))
  INPUTS=$bam
fi

for bam in $INPUTS; do
  out="$BENCH_DIR/columns.d"
  rm -rf "$out"
  "$BIN/bamflow" convert --threads "$THREADS" "$bam" "$out" >/dev/null
  columns=$("$python" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["columns"]))' "$out/_manifest.json")
  cp "$out/_manifest.json" "$BENCH_DIR/columns-all.json"
  : >"$BENCH_DIR/columns-cpu.tsv"
  for column in $columns; do
    rm -rf "$out.one"
    "$BIN/bamflow" convert --threads "$THREADS" --columns "$column" "$bam" "$out.one" >/dev/null
    "$python" - "$column" "$out.one/_manifest.json" >>"$BENCH_DIR/columns-cpu.tsv" <<'EOF'
import json, sys
stages = json.load(open(sys.argv[2]))["stage_seconds"]
print(sys.argv[1], stages["decode"], stages["encode"], sep="\t")
EOF
  done
  echo
  echo "$(basename "$bam") ($(stat -c %s "$bam") bytes)"
  "$python" - "$out" "$BENCH_DIR/columns-all.json" "$BENCH_DIR/columns-cpu.tsv" "$(stat -c %s "$bam")" <<'EOF'
import collections, glob, json, sys
import pyarrow.parquet as pq
out, manifest, cpu, bam_bytes = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3], int(sys.argv[4])
sizes = collections.Counter()
for part in glob.glob(f"{out}/part-*.parquet"):
    meta = pq.ParquetFile(part).metadata
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for i in range(group.num_columns):
            column = group.column(i)
            sizes[column.path_in_schema.split(".")[0]] += column.total_compressed_size
records = manifest["counts"]["written"]
levels = manifest.get("column_zstd_levels", {})
total = sum(sizes.values())
per_m = 1e6 / max(records, 1)
print("| column | bytes | share | bytes/record | zstd level | decode CPU s per M records | encode CPU s per M records |")
print("|---|---|---|---|---|---|---|")
for line in open(cpu):
    name, decode, encode = line.split("\t")
    print(f"| {name} | {sizes[name] / 1e6:.1f} MB | {100 * sizes[name] / total:.1f}% | "
          f"{sizes[name] / max(records, 1):.1f} | {levels.get(name, manifest['zstd_level'])} | "
          f"{float(decode) * per_m:.3f} | {float(encode) * per_m:.3f} |")
print(f"| all | {total / 1e6:.1f} MB ({total / bam_bytes:.3f} × the BAM) | | "
      f"{total / max(records, 1):.1f} | | {manifest['stage_seconds']['decode'] * per_m:.3f} | "
      f"{manifest['stage_seconds']['encode'] * per_m:.3f} |")
EOF
done
