# A release daemon for the benchmarks that watch one: sourced from the repository root.
# Builds the release binaries, makes a scratch folder $dir (removed on exit, with the daemon)
# and $bin (target/release), and gives:
#   start_daemon CONFIG LOG   starts it; sets $pid and $address (its metrics listener)
#   metric NAME{LABELS}       one sample of its /metrics
cargo build --release --quiet --bins
bin=$PWD/target/release

dir=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

start_daemon() {
  "$bin/bamflow" daemon --config "$1" 2>"$2" &
  pid=$!
  address=
  for _ in $(seq 100); do
    address=$(sed -n 's/.*Serving metrics.*address=\([0-9.:]*\).*/\1/p' "$2")
    [ -n "$address" ] && return 0
    sleep 0.1
  done
  cat "$2" >&2
  exit 1
}

metric() { curl -s "http://$address/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
