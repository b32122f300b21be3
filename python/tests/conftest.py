"""Fixtures: real BAM files, built by samtools from the SAM cases in tests/data and by the
repository's deterministic generator (bamgen), and samtools as the oracle."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAM_CASES = sorted((ROOT / "tests" / "data").glob("*.sam"))


def _bamgen() -> str:
    found = os.environ.get("BAMGEN")
    if found:
        return found
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / "bamgen"
        if candidate.exists():
            return str(candidate)
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "bamflow-tests", "--bin", "bamgen"],
        cwd=ROOT,
        check=True,
    )
    return str(ROOT / "target" / "debug" / "bamgen")


@pytest.fixture(scope="session")
def bamgen():
    if shutil.which("samtools") is None:
        pytest.fail("samtools is needed: scripts/test.sh installs it")
    return _bamgen()


@pytest.fixture(scope="session")
def bams(tmp_path_factory, bamgen):
    """name → BAM path: each SAM case through `samtools view -b`, and generated reads of every
    kind (paired short reads with aligner tags, long reads with modification arrays,
    unaligned single-cell reads)."""
    out = tmp_path_factory.mktemp("bams")
    made = {}
    for sam in SAM_CASES:
        bam = out / f"{sam.stem}.bam"
        subprocess.run(["samtools", "view", "-b", "--no-PG", "-o", str(bam), str(sam)], check=True)
        made[sam.stem] = bam
    for kind, records in (("short", 3000), ("long", 60), ("unaligned", 2000)):
        bam = out / f"generated_{kind}.bam"
        generate(bamgen, bam, kind=kind, records=records, seed=7)
        made[f"generated_{kind}"] = bam
    return made


def generate(bamgen, path, *, kind="short", records=1000, seed=1, max_read_length=None):
    command = [bamgen, str(path), "--kind", kind, "--records", str(records), "--seed", str(seed)]
    if max_read_length is not None:
        command += ["--max-read-length", str(max_read_length)]
    subprocess.run(command, check=True, capture_output=True)
    return path


def samtools_view(bam, *flags, regions=()):
    """`samtools view --no-PG` lines: the oracle."""
    run = subprocess.run(
        ["samtools", "view", "--no-PG", *flags, str(bam), *regions],
        check=True,
        capture_output=True,
        text=True,
    )
    return run.stdout.splitlines()


SAM_FIELDS = ["qname", "flag", "rname", "pos", "mapq", "cigar", "rnext", "pnext", "tlen", "seq", "qual"]


def sam_lines(table):
    """SAM record lines rebuilt from a table holding every standard column and `tags`."""
    columns = {name: table.column(name).to_pylist() for name in SAM_FIELDS + ["tags"]}
    lines = []
    for i in range(table.num_rows):
        get = lambda name: columns[name][i]  # noqa: E731
        rname, rnext = get("rname"), get("rnext")
        fields = [
            get("qname") if get("qname") is not None else "*",
            str(get("flag") or 0),
            rname if rname is not None else "*",
            str(get("pos") or 0),
            str(get("mapq") if get("mapq") is not None else 255),
            get("cigar") if get("cigar") is not None else "*",
            "*" if rnext is None else ("=" if rnext == rname else rnext),
            str(get("pnext") or 0),
            str(get("tlen") or 0),
            get("seq") if get("seq") is not None else "*",
            get("qual") if get("qual") is not None else "*",
        ]
        if get("tags"):
            fields.append(get("tags"))
        lines.append("\t".join(fields))
    return lines
