#!/usr/bin/env bash
# Regenerates the README's current performance numbers: runs the benchmarks once and puts
# their output, with the date, the commit and the machine, between the two `bench/readme.sh`
# marker lines of README.md's Performance section. The prose around the block explains the
# numbers and keeps their history; the block itself is never edited by hand.
#
#   bench/readme.sh                    # bench/run.sh and bench/small_files.sh (2 threads)
#   PEERS=/tmp/peers bench/readme.sh   # and the shared harness on that copy of ../shared/bench
#                                      # (setup.sh and make-corpus.sh run there first): bamflow
#                                      # beside polars-bio, oxbow and samtools, REPS passes;
#                                      # then bench/python.sh there (bamflow.scan beside them)
#   DRY=1 bench/readme.sh              # print the block instead of writing README.md
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPS=${REPS:-2}
export THREADS

begin='<!-- bench/readme.sh: begin (generated; edit the script, not this block) -->'
end='<!-- bench/readme.sh: end -->'
grep -qxF "$begin" README.md && grep -qxF "$end" README.md ||
  { echo "README.md lacks the bench/readme.sh marker lines" >&2; exit 2; }

block=$(mktemp)
trap 'rm -f "$block"' EXIT
{
  echo "$begin"
  echo
  echo "Generated $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine daemon store || echo ' (with uncommitted changes)'),"
  echo "$(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $THREADS threads."
  if [ -n "${PEERS:-}" ]; then
    echo
    echo "The shared harness on its corpus (\`$REPS\` passes; each ratio within one pass; wall"
    echo "seconds): bamflow beside polars-bio, oxbow and \`samtools view -@2 -o /dev/null\` (\`sam\`):"
    echo
    cargo build --release --quiet -p bamflow
    bamflow=$PWD/target/release/bamflow
    log=$(mktemp)
    (cd "$PEERS" && BAMFLOW=$bamflow .venv/bin/python scripts/harness.py \
      --input data/short.bam --input data/ubam.bam --input data/long.bam --reps "$REPS" \
      --floor-reps "$REPS" --tools bamflow,polars_bio,oxbow --floors sam) >"$log"
    python3 - "$log" "$PEERS/data" <<'EOF'
import collections, os, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    rec = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    if rec.get("rc") != "0" or "wall_s" not in rec:
        continue
    name = os.path.basename(rec["input"]).removesuffix(".bam")
    runs[(name, rec["rep"])][rec["name"]] = rec
print("| input, pass | bamflow s | ÷ sam | polars-bio ÷ bamflow | oxbow ÷ bamflow | CPU ÷ wall | RSS MiB (polars-bio) | output ÷ BAM |")
print("|---|---|---|---|---|---|---|---|")
for (name, rep), tools in sorted(runs.items()):
    b = tools.get("bamflow")
    if b is None:
        continue
    wall = float(b["wall_s"])
    ratio = lambda tool: f"{float(tools[tool]['wall_s']) / wall:.2f}×" if tool in tools else "-"
    sam = f"{wall / float(tools['sam']['wall_s']):.2f}×" if "sam" in tools else "-"
    cpu = (float(b["user_s"]) + float(b["sys_s"])) / wall
    rss = lambda tool: f"{int(tools[tool]['max_rss_kb']) / 1024:.0f}" if tool in tools else "-"
    bam = os.path.getsize(os.path.join(sys.argv[2], name + ".bam"))
    out = int(b["out_bytes"]) / bam if b.get("out_bytes", "None") != "None" else float("nan")
    print(f"| {name} ({bam / 1e6:.0f} MB), {rep} | {wall:.2f} | {sam} | {ratio('polars_bio')} | "
          f"{ratio('oxbow')} | {cpu:.2f} | {rss('bamflow')} ({rss('polars_bio')}) | {out:.3f} |")
EOF
    rm -f "$log"
    echo
    echo "\`bench/python.sh\` (BAM → Arrow from Python: \`bamflow.scan\` streamed, and collected into one"
    echo "table, beside polars-bio's \`scan_bam().collect()\` and oxbow's batches; whole processes):"
    echo
    echo '```'
    # maturin's progress lines start with an emoji; only the bench's own lines are kept.
    PEERS=$PEERS bench/python.sh | LC_ALL=C grep -v $'^\xf0'
    echo '```'
  fi
  echo
  echo "\`bench/run.sh\` (generated inputs; bamflow beside samtools on the same file):"
  echo
  echo '```'
  bench/run.sh
  echo '```'
  echo
  echo "\`bench/small_files.sh\` (170 BAMs of 11,500 short reads dropped at once into a daemon,"
  echo "\`max_concurrent_files = 2\`, \`settle_seconds = 1\`):"
  echo
  echo '```'
  bench/small_files.sh
  echo '```'
  echo
  echo "$end"
} >"$block"

if [ -n "${DRY:-}" ]; then
  cat "$block"
  exit 0
fi
python3 - "$block" "$begin" "$end" <<'EOF'
import sys
block, begin, end = open(sys.argv[1]).read().rstrip("\n"), sys.argv[2], sys.argv[3]
text = open("README.md").read()
head, rest = text.split(begin + "\n", 1)
_, tail = rest.split(end + "\n", 1)
open("README.md", "w").write(head + block + "\n" + tail)
EOF
echo "README.md: performance block regenerated" >&2
