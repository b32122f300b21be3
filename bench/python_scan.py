#!/usr/bin/env python3
"""BAM → Arrow in memory from Python: bamflow.scan beside polars-bio and oxbow, one run.

Each tool runs in a process of its own under /usr/bin/time -v (twice: the faster run counts,
the larger RSS), with the same tags (found in the file's first 200,000 records, as the shared
bench harness finds them) and the same threads. Prints records/s (whole process: interpreter
start and imports included, for every tool alike), peak RSS, and each ratio to the faster peer; then bamflow.convert
from Python beside the `bamflow convert` binary on the first input.

    bench/python.sh                        # the shared bench corpus, /tmp/peers/data
    PYTHON=/tmp/peers/.venv/bin/python bench/python_scan.py IN.bam [IN.bam...] --threads 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

TOOLS = {
    # Every column (the lossless `tags` text too) and the tags as typed columns, streamed:
    # batches are counted and dropped, so RSS is the reader's own.
    "bamflow_stream": """
import bamflow
n = 0
for b in bamflow.scan(BAM, tags=TAGS, threads=T):
    n += b.num_rows
""",
    # What the peers produce (the record fields and the same tags as columns, without the
    # lossless `tags` text), collected into one table as their collect() does.
    "bamflow_collect": """
import bamflow
columns = RECORD_FIELDS + [t.split(":")[0] for t in TAGS]
n = bamflow.scan(BAM, tags=TAGS, columns=columns, threads=T).read_all().num_rows
""",
    "polars_bio": """
import polars_bio as pb
pb.set_option("datafusion.execution.target_partitions", T)
n = pb.scan_bam(BAM, tag_fields=[t.split(":")[0] for t in TAGS] or None).collect().height
""",
    "oxbow": """
import oxbow as ox, pyarrow as pa
n = 0
for b in ox.from_bam(BAM, tag_defs=[tuple(t.split(":")) for t in TAGS] or None).batches():
    n += pa.record_batch(b).num_rows
""",
}


# The schema's columns but the lossless `tags` text (README, Schema).
RECORD_FIELDS = ["qname", "flag", "rname", "pos", "mapq", "cigar", "rnext", "pnext", "tlen", "seq", "qual", "end"]


def discover_tags(bam, n=200_000):
    view = subprocess.run(
        f"samtools view {bam} | head -n {n} | cut -f12- | tr '\\t' '\\n' | cut -c1-4 | sort -u",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout
    return [t for t in view.split() if re.match(r"^[A-Za-z][A-Za-z0-9]:[AifZH]$", t)]


def timed(command):
    """(wall seconds, peak RSS MiB, stdout) of a command under /usr/bin/time -v."""
    # pyarrow imports numpy, whose OpenBLAS threads spin on the cores the tools need: one
    # BLAS thread for every tool alike.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    started = time.monotonic()
    run = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    if run.returncode != 0:
        return wall, None, run.stderr.strip().splitlines()[-3:]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)) / 1024
    return wall, rss, run.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=2, help="runs per tool; the fastest counts")
    ap.add_argument("--python", default=os.environ.get("PYTHON", sys.executable))
    ap.add_argument("--bamflow", default=os.environ.get("BAMFLOW", "target/release/bamflow"))
    a = ap.parse_args()

    for bam in a.inputs:
        records = int(subprocess.run(["samtools", "view", "-c", f"-@{a.threads}", bam], capture_output=True, text=True, check=True).stdout)
        tags = discover_tags(bam)
        print(f"\n{os.path.basename(bam)}: {records:,} records, {os.path.getsize(bam) / 2**20:.0f} MiB, "
              f"tags {','.join(tags) or '-'}, {a.threads} threads")
        print(f"  {'tool':<16} {'records/s':>12} {'peak RSS MiB':>13} {'rows':>11}")
        rates = {}
        for tool, body in TOOLS.items():
            script = f"BAM={bam!r}; TAGS={tags!r}; T={a.threads}; RECORD_FIELDS={RECORD_FIELDS!r}\n{body}\nprint(n)"
            runs = [timed([a.python, "-c", script]) for _ in range(a.reps)]
            if any(rss is None for _, rss, _ in runs):
                print(f"  {tool:<16} failed: {[out for _, rss, out in runs if rss is None][0]}")
                continue
            wall = min(w for w, _, _ in runs)
            rss = max(r for _, r, _ in runs)
            out = runs[0][2]
            rows = int(out.splitlines()[-1])
            rates[tool] = records / wall
            print(f"  {tool:<16} {records / wall:>12,.0f} {rss:>13,.0f} {rows:>11,}")
        peers = [rates[t] for t in ("polars_bio", "oxbow") if t in rates]
        if peers and "bamflow_collect" in rates:
            best = max(peers)
            print(f"  bamflow / faster peer: stream {rates['bamflow_stream'] / best:.2f}x, "
                  f"collect {rates['bamflow_collect'] / best:.2f}x")

    # convert from Python beside the binary, on the first input.
    bam = a.inputs[0]
    scratch = tempfile.mkdtemp()
    try:
        # Alternated, best of three each: the page cache and the other core are shared.
        cli, py = [], []
        for i in range(3):
            cli.append(timed([a.bamflow, "convert", bam, f"{scratch}/cli{i}", "--threads", str(a.threads)])[0])
            script = f"import bamflow; bamflow.convert({bam!r}, {scratch + f'/py{i}'!r}, threads={a.threads})"
            py.append(timed([a.python, "-c", script])[0])
        print(f"\nconvert {os.path.basename(bam)}, best of 3: bamflow.convert {min(py):.2f} s, "
              f"`bamflow convert` {min(cli):.2f} s: Python / binary {min(py) / min(cli):.3f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
