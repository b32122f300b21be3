# Settings and checks every benchmark script shares; sourced from the repository root.
# SCALE multiplies the input sizes, THREADS the cores used, BENCH_DIR caches inputs.
SCALE=${SCALE:-1}
THREADS=${THREADS:-$(nproc)}
BENCH_DIR=${BENCH_DIR:-target/bench}
BIN=target/release
mkdir -p "$BENCH_DIR"
command -v samtools >/dev/null || { echo "needs samtools" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }

# measure CMD... → prints its wall and CPU seconds and peak RSS (kB): "wall cpu rss"
measure() {
  local log
  log=$(mktemp)
  /usr/bin/time -f '%e %U %S %M' -o "$log" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; cat "$log" >&2; exit 1; }
  awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}' "$log"
  rm -f "$log"
}
