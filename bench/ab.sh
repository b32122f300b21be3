#!/usr/bin/env bash
# A/B: this checkout against another revision on the same generated inputs, in one run.
# Builds REV in a worktree (target/ab/REV, its own target dir), converts each input with both
# binaries alternately REPS times (default 3), and prints per input the median wall time and
# peak RSS of each and their ratios, and whether the two datasets are byte-identical or, if
# not, hold equal values (pyarrow; long reads close row groups by bytes, whose boundaries move).
#
#   bench/ab.sh 85af787              # before the engine became its own crate
#   REPS=5 SCALE=2 bench/ab.sh main~3
#   INPUTS="data/short.bam data/long.bam" bench/ab.sh main~3   # these BAMs instead
#
# Needs GNU time, and python3 with pyarrow for the value check (scripts/test.sh makes
# target/test-venv, used when present). Inputs are cached in $BENCH_DIR (default target/bench).
set -euo pipefail
cd "$(dirname "$0")/.."

REV=${1:?usage: bench/ab.sh REV}
REPS=${REPS:-3}
. bench/common.sh

rev=$(git rev-parse --short "$REV")
tree=target/ab/$rev
[ -d "$tree" ] || git worktree add --detach "$tree" "$rev" >/dev/null
echo "building $rev and this checkout..." >&2
(cd "$tree" && CARGO_TARGET_DIR=$PWD/../target-$rev cargo build --release --quiet -p bamflow)
cargo build --release --quiet --bins
old=$PWD/target/ab/target-$rev/release/bamflow
new=$PWD/$BIN/bamflow
python=python3
[ -x target/test-venv/bin/python ] && python=target/test-venv/bin/python

inputs=(
  "short short $((2000000 * SCALE))"
  "long long $((20000 * SCALE)) --max-read-length 300000"
  "unaligned unaligned $((2000000 * SCALE))"
)
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

printf '%-10s %10s %10s %7s %10s %10s %7s  %s\n' input old_wall_s new_wall_s ratio old_rss_MB new_rss_MB ratio datasets
if [ -n "${INPUTS:-}" ]; then
  inputs=()
  for bam in $INPUTS; do inputs+=("$(basename "$bam" .bam) file 0 $bam"); done
fi
for spec in "${inputs[@]}"; do
  read -r name kind records extra <<<"$spec"
  if [ "$kind" = file ]; then
    bam=$extra
  else
    bam="$BENCH_DIR/$name-$records.bam"
    [ -s "$bam" ] || "$BIN/bamgen" "$bam" --kind "$kind" --records "$records" ${extra:-}
  fi
  : >"$BENCH_DIR/ab-old.txt"
  : >"$BENCH_DIR/ab-new.txt"
  for _ in $(seq "$REPS"); do
    for side in old new; do
      out="$BENCH_DIR/ab-$side.d"
      rm -rf "$out"
      bin=$old
      [ "$side" = new ] && bin=$new
      measure "$bin" convert --threads "$THREADS" "$bam" "$out" >>"$BENCH_DIR/ab-$side.txt"
    done
  done
  ow=$(cut -d' ' -f1 "$BENCH_DIR/ab-old.txt" | median)
  nw=$(cut -d' ' -f1 "$BENCH_DIR/ab-new.txt" | median)
  orss=$(cut -d' ' -f3 "$BENCH_DIR/ab-old.txt" | median)
  nrss=$(cut -d' ' -f3 "$BENCH_DIR/ab-new.txt" | median)
  if diff -rq -x _manifest.json "$BENCH_DIR/ab-old.d" "$BENCH_DIR/ab-new.d" >/dev/null; then
    same="byte-identical parts"
  elif "$python" - "$BENCH_DIR/ab-old.d" "$BENCH_DIR/ab-new.d" <<'EOF'; then
import sys, pyarrow as pa, pyarrow.dataset as ds
def values(path):
    # Dictionaries are per row group: compare the strings, not the chunks' dictionaries.
    table = ds.dataset(path, format="parquet").to_table()
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table.combine_chunks()
a, b = values(sys.argv[1]), values(sys.argv[2])
sys.exit(0 if a.equals(b) else 1)
EOF
    same="equal values (parts differ in bytes)"
  else
    same="VALUES DIFFER"
  fi
  awk -v n="$name" -v ow="$ow" -v nw="$nw" -v orss="$orss" -v nrss="$nrss" -v s="$same" \
    'BEGIN { printf "%-10s %10.2f %10.2f %6.2fx %10.0f %10.0f %6.2fx  %s\n", n, ow, nw, nw / ow, orss / 1024, nrss / 1024, nrss / orss, s }'
done
