#!/usr/bin/env bash
# A soak: FILES small BAMs (default 2,000) dropped into a watched folder in waves — most good,
# some duplicates of earlier ones, some corrupt, some text under a .bam name, some cut short
# and never finished — then IDLE seconds (default 300) of idling with 1 s rescans, which is as
# many full rescans as 50 minutes at the default 10 s, and 300 re-checks of every waiting file.
#
# Prints the daemon's RSS (anonymous and file-backed), open fds and threads before the first
# file, once the first wave is handled (warm: code paged in), once every file is handled, and
# after the idle time; then where every file ended: done/, failed/ (each with its
# error.json), or waiting with a reason in `bamflow status`. Exits 1 if a file is unaccounted
# for, if fds or threads grew, or if RSS at the end is more than 5% above the warm baseline.
#
#   bench/soak.sh
#   FILES=400 IDLE=60 bench/soak.sh
#   MALLOC_STATS=1 FILES=600 IDLE=10 bench/soak.sh   # glibc's malloc_stats() in the daemon log
#
# MALLOC_STATS runs malloc_stats() inside the daemon through gdb, which itself allocates there:
# read its bytes-in-use, not that run's RSS verdict (1,000 files: 1.035 with it, 0.988 without).
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=${FILES:-2000}
IDLE=${IDLE:-300}
WAVE=${WAVE:-100}
. bench/daemon.sh

mkdir -p "$dir/inbox" "$dir/src"
cat >"$dir/bamflow.toml" <<EOF
[daemon]
state_dir = "$dir/state"
metrics_listen = "127.0.0.1:0"
scan_interval_seconds = 1
max_concurrent_files = 2

[[watch]]
name = "soak"
path = "$dir/inbox"
settle_seconds = 1
output = "$dir/outbox/{stem}"
EOF

# The files: every 20th a duplicate of the one before, every 20th (offset 5) corrupt, every
# 40th (offset 10) text, every 40th (offset 30) cut short; the rest good.
kinds=()
for i in $(seq 1 "$FILES"); do
  case $((i % 40)) in
    0 | 20) kinds+=(duplicate) ;;
    5 | 25) kinds+=(corrupt) ;;
    10) kinds+=(text) ;;
    30) kinds+=(cut) ;;
    *) kinds+=(good) ;;
  esac
done
echo "generating $FILES files..." >&2
for i in $(seq 1 "$FILES"); do
  f="$dir/src/f$i.bam"
  case ${kinds[$((i - 1))]} in
    good) "$bin/bamgen" "$f" --records 200 --seed "$i" >/dev/null ;;
    duplicate) cp "$dir/src/f$((i - 1)).bam" "$f" ;;
    corrupt)
      "$bin/bamgen" "$f" --records 200 --seed "$i" >/dev/null
      printf '\xff\xff\xff\xff\xff\xff\xff\xff' | dd of="$f" bs=1 seek=2000 conv=notrunc status=none
      ;;
    text) printf 'sample\tlane\nNA%05d\t1\n' "$i" >"$f" ;;
    cut)
      "$bin/bamgen" "$f.full" --records 200 --seed "$i" >/dev/null
      head -c 9000 "$f.full" >"$f" && rm "$f.full"
      ;;
  esac
done

start_daemon "$dir/bamflow.toml" "$dir/daemon.log"
sleep 2

usage() { # label → "label rss_kb anon_kb file_kb fds threads"
  local rss anon file threads fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
  file=$(awk '/^RssFile:/ {print $2}' "/proc/$pid/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
  fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  printf '%-28s %10s %10s %10s %6s %8s\n' "$1" "$rss" "$anon" "$file" "$fds" "$threads"
  # MALLOC_STATS=1: glibc's per-arena bytes in use against bytes held, into the daemon's log,
  # to tell memory still referenced from memory freed but not returned.
  if [ -n "${MALLOC_STATS:-}" ]; then
    echo "malloc_stats at: $1" >>"$dir/daemon.log"
    gdb -p "$pid" -batch -ex 'call (void) malloc_stats()' >/dev/null 2>&1 || echo "gdb failed" >&2
  fi
}

report=$(mktemp)
printf '%-28s %10s %10s %10s %6s %8s\n' moment rss_kb anon_kb file_kb fds threads >"$report"
usage "before the first file" >>"$report"

# BAMs in a folder (0 while it does not exist yet).
bams() { find "$1" -name '*.bam' 2>/dev/null | wc -l || true; }
# Waits until every file of the first $1 dropped but the cut ones is filed away.
handled_upto() {
  local want handled
  want=$(($1 - $(printf '%s\n' "${kinds[@]:0:$1}" | grep -c '^cut$' || true)))
  while :; do
    handled=$(($(bams "$dir/inbox/done") + $(bams "$dir/inbox/failed")))
    [ "$handled" -ge "$want" ] && return
    if [ $(($(date +%s) - started)) -gt 3600 ]; then echo "only $handled of $want handled after an hour" >&2; exit 1; fi
    sleep 1
  done
}
drop() { for ((j = $1; j <= $2 && j <= FILES; j++)); do cp "$dir/src/f$j.bam" "$dir/inbox/"; done; }

echo "dropping them in waves of $WAVE..." >&2
started=$(date +%s)
# The first wave alone: what the daemon holds once warm (code paged in, pools made) is the
# baseline a leak is measured against.
drop 1 "$WAVE"
handled_upto "$WAVE"
sleep 3
usage "after the first wave" >>"$report"
for ((i = WAVE + 1; i <= FILES; i += WAVE)); do
  drop "$i" $((i + WAVE - 1))
  sleep 1
done
handled_upto "$FILES"
handled=$(($(bams "$dir/inbox/done") + $(bams "$dir/inbox/failed")))
echo "handled $handled files in $(($(date +%s) - started)) s; idling $IDLE s..." >&2
sleep 3
usage "every file handled" >>"$report"
rescans0=$(metric 'bamflow_watch_rescans_total{reason="interval"}')
events0=$(metric 'bamflow_watch_rescans_total{reason="event"}')
sleep "$IDLE"
usage "after ${IDLE} s idle" >>"$report"
rescans1=$(metric 'bamflow_watch_rescans_total{reason="interval"}')
events1=$(metric 'bamflow_watch_rescans_total{reason="event"}')

cat "$report"
if [ -n "${MALLOC_STATS:-}" ]; then
  awk '/^malloc_stats at/ {print} /^Total \(incl/ {getline a; getline b; print "  " a; print "  " b}' "$dir/daemon.log"
fi
echo "while idle: $((rescans1 - rescans0)) interval rescans, $((events1 - events0)) event rescans"

# Where every file ended.
done_n=$(find "$dir/inbox/done" -name '*.bam' | wc -l)
failed_n=$(find "$dir/inbox/failed" -name '*.bam' | wc -l)
reports=$(find "$dir/inbox/failed" -name '*.bam.error.json' | wc -l)
status=$("$bin/bamflow" status --config "$dir/bamflow.toml")
waiting=$(grep -c 'no_eof_block: no BGZF EOF block yet' <<<"$status" || true)
in_inbox=$(find "$dir/inbox" -maxdepth 1 -name '*.bam' | wc -l)
expect() { printf '%s\n' "${kinds[@]}" | grep -c "^$1$" || true; }
printf '\n%-10s %8s %8s\n' kind dropped ""
for k in good duplicate corrupt text cut; do printf '%-10s %8d\n' "$k" "$(expect "$k")"; done
printf '\n%-34s %6d (good + duplicate: %d)\n' "in done/" "$done_n" $(($(expect good) + $(expect duplicate)))
printf '%-34s %6d (corrupt + text: %d), %d error.json\n' "in failed/" "$failed_n" $(($(expect corrupt) + $(expect text))) "$reports"
printf '%-34s %6d (cut: %d), %d of them with their reason in status\n' "waiting in the inbox" "$in_inbox" "$(expect cut)" "$waiting"
printf '%-34s %6s\n' "outcome=duplicate in metrics" "$(metric 'bamflow_files_processed_total{outcome="duplicate",watch="soak"}')"

rc=0
[ "$done_n" -eq $(($(expect good) + $(expect duplicate))) ] || { echo "done/ count differs" >&2; rc=1; }
[ "$failed_n" -eq $(($(expect corrupt) + $(expect text))) ] && [ "$reports" -eq "$failed_n" ] || { echo "failed/ count differs" >&2; rc=1; }
[ "$in_inbox" -eq "$(expect cut)" ] && [ "$waiting" -eq "$(expect cut)" ] || { echo "a waiting file lacks its reason" >&2; rc=1; }
# Against the warm baseline: RSS within 5%, not one fd or thread more.
row() { sed -n "$1p" "$report" | awk '{print $(NF-4), $(NF-1), $NF}'; }
read -r rss_warm fds_warm threads_warm < <(row 3)
read -r rss_end fds_end threads_end < <(row 5)
echo "RSS at the end / after the first wave: $(awk -v a="$rss_end" -v b="$rss_warm" 'BEGIN {printf "%.3f", a / b}')"
[ $((rss_end * 100)) -le $((rss_warm * 105)) ] || { echo "RSS grew more than 5% over the warm baseline" >&2; rc=1; }
[ "$fds_end" -le "$fds_warm" ] && [ "$threads_end" -le "$threads_warm" ] || { echo "fds or threads grew" >&2; rc=1; }
exit $rc
