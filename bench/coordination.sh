#!/usr/bin/env bash
# Several daemons through PostgreSQL, measured: small files per second with one daemon on its
# own state_dir (no database), one daemon on PostgreSQL, and three daemons on PostgreSQL sharing
# one drop folder on this host (what coordination costs per file, in ms); then the time from a
# `kill -9` of a daemon mid-file to another daemon resuming that file, against lease_seconds.
#
#   bench/coordination.sh                 # 300 files of 2,000 records; leases of 5 and 10 s
#   FILES=1000 LEASES="3 10 30" bench/coordination.sh
#
# Starts a private PostgreSQL cluster (initdb + pg_ctl in a temp folder; as nobody when run
# as root) on a free port; needs the postgresql server package.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-300}
LEASES=${LEASES:-5 10}
cargo build --release --quiet --bins
bin=$PWD/target/release
scratch=$(mktemp -d /tmp/bamflow-coord.XXXXXX)
chmod 755 "$scratch"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; else "$@"; fi; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  as_pg "$pgbin/pg_ctl" -D "$scratch/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT
mkdir "$scratch/pg"
[ "$(id -u)" = 0 ] && chown 65534 "$scratch/pg"
as_pg "$pgbin/initdb" -D "$scratch/pg/data" -U bamflow -A trust --no-sync >/dev/null
as_pg "$pgbin/pg_ctl" -D "$scratch/pg/data" -w -l "$scratch/pg/log" \
  -o "-p $port -k $scratch/pg -c listen_addresses=127.0.0.1" start >/dev/null
# One database per run: a shared ledger would call the next run's files duplicates.
url_of() { echo "postgresql://bamflow@127.0.0.1:$port/$1"; }

# The small files, generated once.
mkdir "$scratch/src"
for i in $(seq 1 "$FILES"); do
  "$bin/bamgen" "$scratch/src/f$i.bam" --records 2000 --seed "$i" >/dev/null
done

config() { # name run lease [coordinated] → config path
  local name=$1 run=$2 lease=$3 coordinated=${4:-yes}
  local file=$scratch/$run/$name.toml
  cat >"$file" <<EOF
[daemon]
state_dir = "$scratch/$run/state-$name"
scan_interval_seconds = 1
threads = 1
metrics_listen = ""
[[watch]]
name = "bench"
path = "$scratch/$run/inbox"
settle_seconds = 1
output = "$scratch/$run/lake/{stem}"
[convert]
part_records = 4000
EOF
  if [ "$coordinated" = yes ]; then
    [ -e "$scratch/pg/db-$run" ] || { as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U bamflow "$run"; touch "$scratch/pg/db-$run"; }
    printf '[coordination]\npostgres_url = "%s"\nlease_seconds = %s\n' "$(url_of "$run")" "$lease" >>"$file"
  fi
  echo "$file"
}

start() { # config log
  BAMFLOW_LOG=info "$bin/bamflow" daemon --config "$1" 2>"$2" &
  pids+=($!)
}

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

throughput() { # run daemons coordinated → files/s
  local run=$1 daemons=$2 coordinated=$3
  mkdir -p "$scratch/$run/inbox"
  for d in $(seq 1 "$daemons"); do
    start "$(config "d$d" "$run" 10 "$coordinated")" "$scratch/$run/d$d.log"
  done
  sleep 1
  local t0 t1
  t0=$(date +%s.%N)
  # Renamed into place at once: every daemon sees the whole backlog.
  for f in "$scratch"/src/*.bam; do ln "$f" "$scratch/$run/inbox/$(basename "$f")"; done
  until [ "$(ls "$scratch/$run/inbox/done" 2>/dev/null | wc -l)" -ge "$FILES" ]; do sleep 0.2; done
  t1=$(date +%s.%N)
  stop_all
  local datasets
  datasets=$(ls "$scratch/$run/lake" | wc -l)
  [ "$datasets" = "$FILES" ] || { echo "expected $FILES datasets, found $datasets" >&2; exit 1; }
  echo "$FILES / ($t1 - $t0)" | bc -l
}

echo "== small files ($FILES × 2,000 records), settle 1 s, scans every 1 s, 1 thread per daemon"
local1=$(throughput local1 1 no)
pg1=$(throughput pg1 1 yes)
pg3=$(throughput pg3 3 yes)
printf '%-34s %8s %16s\n' setup files/s "ms per file"
printf '%-34s %8.1f %16.2f\n' "1 daemon, state_dir (no database)" "$local1" "$(echo "1000 / $local1" | bc -l)"
printf '%-34s %8.1f %16.2f\n' "1 daemon, PostgreSQL" "$pg1" "$(echo "1000 / $pg1" | bc -l)"
printf '%-34s %8.1f %16.2f\n' "3 daemons, PostgreSQL" "$pg3" "$(echo "1000 / $pg3" | bc -l)"
printf 'coordination overhead per file (1 daemon): %.2f ms; 3 daemons ÷ 1 daemon on PostgreSQL: %.2f×\n' \
  "$(echo "1000 / $pg1 - 1000 / $local1" | bc -l)" "$(echo "$pg3 / $pg1" | bc -l)"

echo
echo "== kill -9 mid-file → another daemon resumes it"
"$bin/bamgen" "$scratch/big.bam" --records 400000 --seed 7 >/dev/null
printf '%-14s %22s %22s\n' lease_seconds "kill → takeover (s)" "takeover − lease (s)"
for lease in $LEASES; do
  run=kill$lease
  mkdir -p "$scratch/$run/inbox"
  BAMFLOW_FAULTS=part-renamed=kill@3 BAMFLOW_LOG=info "$bin/bamflow" daemon \
    --config "$(config a "$run" "$lease")" 2>"$scratch/$run/a.log" &
  victim=$!
  # The victim claims the file first; the other daemon starts as it does, and waits.
  ln "$scratch/big.bam" "$scratch/$run/inbox/big.bam"
  until grep -q "Converting file" "$scratch/$run/a.log"; do sleep 0.02; done
  start "$(config b "$run" "$lease")" "$scratch/$run/b.log"
  wait "$victim" 2>/dev/null || true
  killed=$(date +%s.%N)
  until grep -q "Took over a file" "$scratch/$run/b.log"; do sleep 0.05; done
  taken=$(date +%s.%N)
  until [ -e "$scratch/$run/inbox/done/big.bam" ]; do sleep 0.2; done
  stop_all
  grep -q 'Resuming conversion from its checkpoint' "$scratch/$run/b.log" || { echo "no resume" >&2; exit 1; }
  printf '%-14s %22.2f %22.2f\n' "$lease" "$(echo "$taken - $killed" | bc -l)" "$(echo "$taken - $killed - $lease" | bc -l)"
done
