"""convert from Python: progress, cancelling, Ctrl-C, errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time

import pytest

import bamflow
from conftest import ROOT, generate, samtools_view


@pytest.fixture(scope="module")
def slow_bam(bamgen, tmp_path_factory):
    """Long enough on one thread that a conversion can be stopped in the middle."""
    return generate(bamgen, tmp_path_factory.mktemp("slow") / "slow.bam", records=600_000, seed=11)


def test_progress_counts_rise_and_end_at_the_totals(bamgen, tmp_path):
    bam = generate(bamgen, tmp_path / "in.bam", records=300_000, seed=5)
    calls = []
    manifest = bamflow.convert(bam, tmp_path / "out", threads=1, progress=lambda *a: calls.append(a))
    size = bam.stat().st_size
    assert len(calls) >= 2, calls
    records = [c[0] for c in calls]
    done = [c[1] for c in calls]
    assert records == sorted(records) and done == sorted(done), calls
    assert all(total == size for _, _, total in calls)
    assert calls[-1] == (manifest["counts"]["read"], size, size)
    assert manifest["counts"]["read"] == len(samtools_view(bam))


def test_returning_false_cancels_and_leaves_nothing(slow_bam, tmp_path):
    out = tmp_path / "out"
    calls = []

    def stop_soon(records, done, total):
        calls.append(records)
        return len(calls) < 2

    with pytest.raises(bamflow.Cancelled) as raised:
        bamflow.convert(slow_bam, out, threads=1, progress=stop_soon)
    assert isinstance(raised.value, bamflow.ConvertError)
    assert raised.value.path == str(slow_bam)
    assert list(tmp_path.iterdir()) == []


def test_an_exception_in_the_callback_stops_and_propagates(slow_bam, tmp_path):
    def fail(*_):
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        bamflow.convert(slow_bam, tmp_path / "out", threads=1, progress=fail)
    assert list(tmp_path.iterdir()) == []


def test_a_cancelled_conversion_resumes_when_asked(slow_bam, tmp_path):
    out = tmp_path / "out"
    calls = []

    def stop_after_a_part(records, done, total):
        calls.append(records)
        return records < 150_000

    with pytest.raises(bamflow.Cancelled):
        bamflow.convert(slow_bam, out, threads=1, part_records=100_000, resume=True, progress=stop_after_a_part)
    assert not out.exists()
    manifest = bamflow.convert(slow_bam, out, threads=1, part_records=100_000, resume=True)
    assert manifest["resumes"] == 1
    assert manifest["counts"]["written"] == len(samtools_view(slow_bam))


CTRL_C = """
import os, signal, sys, threading, time
import bamflow
# Ctrl-C a quarter of a second in, as a terminal would send it.
threading.Timer(0.25, os.kill, (os.getpid(), signal.SIGINT)).start()
started = time.monotonic()
try:
    bamflow.convert(sys.argv[1], sys.argv[2], threads=1)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.2f}")
    sys.exit(0)
print("finished")
sys.exit(1)
"""


def test_ctrl_c_cancels_within_a_second_and_publishes_nothing(slow_bam, tmp_path):
    out = tmp_path / "out"
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", CTRL_C, str(slow_bam), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # The conversion alone takes several seconds on one thread; the interpreter's start is
    # counted in, but not a whole conversion.
    seconds = float(run.stdout.split()[-1])
    assert seconds < 1.25 + 1.0, run.stdout
    assert time.monotonic() - started < 20
    assert list(tmp_path.iterdir()) == []


def test_bad_input_raises_convert_error_naming_file_and_stage(bams, tmp_path):
    text = tmp_path / "notes.bam"
    text.write_text("sample\tlane\nNA00001\t1\n")
    with pytest.raises(bamflow.ConvertError) as raised:
        bamflow.convert(text, tmp_path / "out1")
    error = raised.value
    assert (error.path, error.stage, error.kind, error.offset) == (str(text), "read", "invalid_input", 0)
    assert "not a BGZF file" in str(error)

    cut = tmp_path / "cut.bam"
    cut.write_bytes(bams["generated_short"].read_bytes()[:20_000])
    with pytest.raises(bamflow.ConvertError) as raised:
        bamflow.convert(cut, tmp_path / "out2")
    assert raised.value.path == str(cut) and raised.value.stage == "read"
    assert "truncated" in str(raised.value) and raised.value.offset is not None

    with pytest.raises(bamflow.ConvertError) as raised:
        bamflow.scan(tmp_path / "missing.bam")
    assert raised.value.stage == "open" and raised.value.kind == "io"

    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.bam", "notes.bam"]
    # The error survives a trip to another process (multiprocessing pickles it).
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.stage, copy.offset, str(copy)) == (bamflow.ConvertError, "read", 0, str(error))


def test_convert_returns_the_manifest_it_writes(bams, tmp_path):
    manifest = bamflow.convert(bams["cigars"], tmp_path / "out", tags=["NM:i"])
    assert manifest == json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert bamflow.profile(bams["cigars"])["sort_order"] == manifest["profile"]["sort_order"]


def plugin_library(name):
    """A filter plugin of the workspace (cargo test --workspace builds them)."""
    path = ROOT / "target" / "debug" / f"libbamflow_{name}.so"
    if not path.exists():
        subprocess.run(["cargo", "build", "--quiet", "-p", f"bamflow-{name.replace('_', '-')}"], cwd=ROOT, check=True)
    return path


def test_a_filter_plugin_drops_what_it_should(bams, tmp_path):
    library = plugin_library("min_aligned_length")
    bam = bams["generated_long"]
    manifest = bamflow.convert(
        bam, tmp_path / "out", plugins=[{"path": library, "config": {"min_length": 5000}}], columns=["pos", "end"]
    )
    counts = manifest["counts"]
    assert 0 < counts["written"] < counts["read"] == len(samtools_view(bam)), counts
    assert sum(counts["filtered"].values()) == counts["read"] - counts["written"]
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert all(r["end"] - r["pos"] + 1 >= 5000 for r in rows)

    with pytest.raises(bamflow.ConvertError) as raised:
        bamflow.convert(bam, tmp_path / "pinned", plugins=[{"path": library, "sha256": "0" * 64}])
    assert raised.value.stage == "filter" and raised.value.kind == "plugin", raised.value
    with pytest.raises(ValueError, match="unknown key"):
        bamflow.convert(bam, tmp_path / "x", plugins=[{"path": library, "conf": {}}])
