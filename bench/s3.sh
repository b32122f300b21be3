#!/usr/bin/env bash
# A conversion to a local S3-compatible server (moto) beside the same conversion to a local
# folder, alternating, in one run: wall-time ratio (goal ≤ 1.15), peak RSS of each, and the
# bytes in the bucket against the local dataset's; then the same BAM read from the bucket
# (s3:// input, ranged reads) into a local folder against the local read. Ratios, not seconds.
#
#   bench/s3.sh                                   # shared corpus short2m.bam, 2 rounds
#   INPUT=/tmp/peers/data/short.bam ROUNDS=1 bench/s3.sh
#
# The store's CPU is not ours on a real deployment: moto runs pinned to the last core and both
# conversions to the others (THREADS defaults to cores - 1). moto keeps objects in memory and is
# one Python process (~80-100 MB/s here), slower than MinIO or S3: the ratio is an upper bound.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-/tmp/peers}
INPUT=${INPUT:-$PEERS/data/short2m.bam}
ROUNDS=${ROUNDS:-2}
cores=$(nproc)
[ "$cores" -ge 2 ] || { echo "needs 2 cores: one for the store" >&2; exit 2; }
THREADS=${THREADS:-$((cores - 1))}
ours="0-$((cores - 2))"
VENV=${VENV:-target/test-venv}
[ -x "$VENV/bin/moto_server" ] || "$VENV/bin/python" -m pip install --quiet 'moto[server]>=5.1,<6'
cargo build --release --quiet --bins
bin=$PWD/target/release/bamflow
scratch=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c "$((cores - 1))" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$scratch/moto.log" 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$scratch"' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
curl -s -X PUT -o /dev/null "http://127.0.0.1:$port/bench"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port

run() { # output [input] → "wall rss_kb"
  /usr/bin/time -f '%e %M' -o "$scratch/time" taskset -c "$ours" "$bin" convert "${2:-$INPUT}" "$1" --threads "$THREADS" \
    --spool "$scratch/spool" >/dev/null 2>"$scratch/err" || { cat "$scratch/err" >&2; exit 1; }
  cat "$scratch/time"
}
server_cpu() { # → CPU seconds moto has used so far (it shares our cores)
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$moto/stat"
}
bucket_bytes() { # prefix → bytes under it
  curl -s "http://127.0.0.1:$port/bench?list-type=2&prefix=$1/" | tr '<' '\n' | awk -F'>' '$1=="Size"{s+=$2} END{print s+0}'
}

printf '%s: %s bytes, %s threads on cores %s, moto on core %s\n' "$(basename "$INPUT")" \
  "$(stat -c %s "$INPUT")" "$THREADS" "$ours" "$((cores - 1))"
printf '%6s %10s %10s %8s %12s %12s %14s %s\n' round "local s" "s3 s" "s3÷local" "local RSS MB" "s3 RSS MB" "moto CPU s" "bytes s3÷local"
for round in $(seq 1 "$ROUNDS"); do
  read -r lwall lrss < <(run "$scratch/local-$round")
  before=$(server_cpu)
  read -r swall srss < <(run "s3://bench/datasets/r$round")
  server=$(echo "$(server_cpu) - $before" | bc)
  local_bytes=$(du -sb "$scratch/local-$round" | cut -f1)
  s3_bytes=$(bucket_bytes "datasets/r$round")
  printf '%6d %10.2f %10.2f %8.3f %12.0f %12.0f %14.2f %.4f\n' "$round" "$lwall" "$swall" \
    "$(echo "$swall / $lwall" | bc -l)" "$(echo "$lrss / 1024" | bc -l)" "$(echo "$srss / 1024" | bc -l)" "$server" \
    "$(echo "$s3_bytes / $local_bytes" | bc -l)"
  rm -rf "$scratch/local-$round"
done

# The input from the bucket: one PUT of the whole BAM, then ranged reads into a local folder.
curl -s -f -X PUT -T "$INPUT" -o /dev/null "http://127.0.0.1:$port/bench/input.bam"
printf '\n%6s %10s %10s %8s %12s %12s %14s\n' round "local s" "s3 in s" "s3÷local" "local RSS MB" "s3 RSS MB" "moto CPU s"
for round in $(seq 1 "$ROUNDS"); do
  read -r lwall lrss < <(run "$scratch/local-$round")
  before=$(server_cpu)
  read -r swall srss < <(run "$scratch/from-s3-$round" s3://bench/input.bam)
  server=$(echo "$(server_cpu) - $before" | bc)
  counts() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"])' "$1/_manifest.json"; }
  [ "$(counts "$scratch/local-$round")" = "$(counts "$scratch/from-s3-$round")" ] ||
    { echo "the s3:// input's counts differ from the local input's" >&2; exit 1; }
  printf '%6d %10.2f %10.2f %8.3f %12.0f %12.0f %14.2f\n' "$round" "$lwall" "$swall" \
    "$(echo "$swall / $lwall" | bc -l)" "$(echo "$lrss / 1024" | bc -l)" "$(echo "$srss / 1024" | bc -l)" "$server"
  rm -rf "$scratch/local-$round" "$scratch/from-s3-$round"
done
