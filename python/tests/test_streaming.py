"""scan as a stream: Polars and DuckDB take it, only the asked columns are decoded, and memory
does not grow with the file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import duckdb
import polars as pl
import pyarrow as pa

import bamflow
from conftest import generate, samtools_view


def samtools_counts(bam):
    """Records per reference name (`*` for none), as samtools prints them."""
    return dict(Counter(line.split("\t")[2] for line in samtools_view(bam)))


def test_polars_counts_per_reference_equal_samtools(bams):
    bam = bams["generated_short"]
    frame = pl.from_arrow(bamflow.scan(bam, columns=["rname"]))
    counts = frame.group_by("rname").len()
    ours = {(name if name is not None else "*"): n for name, n in counts.iter_rows()}
    assert ours == samtools_counts(bam)


def test_duckdb_counts_per_reference_equal_samtools(bams):
    bam = bams["generated_unaligned"]
    reader = bamflow.scan(bam, columns=["rname", "flag"])
    rows = duckdb.sql("SELECT coalesce(rname, '*'), count(*) FROM reader GROUP BY 1").fetchall()
    assert dict(rows) == samtools_counts(bam)


def test_the_stream_exports_through_the_c_interface(bams):
    reader = bamflow.scan(bams["generated_long"], columns=["qname", "seq"])
    assert hasattr(reader, "__arrow_c_stream__")
    # pyarrow takes any object that exports the stream: no copy, no Python-side batches.
    table = pa.table(reader)
    assert table.num_rows == len(samtools_view(bams["generated_long"]))


def test_a_column_subset_decodes_only_those_columns(bams, tmp_path):
    # The tags of one record are corrupt: a type byte no BAM uses. A scan that asks for the
    # tags must fail at decode, naming the record; one that does not ask never looks at them.
    bam = bams["tag_types"]
    broken = tmp_path / "broken_tags.bam"
    corrupt_first_tag_type(bam, broken)
    positions = bamflow.scan(broken, columns=["qname", "pos"]).read_all()
    assert positions.column("pos").to_pylist() == [
        int(line.split("\t")[3]) for line in samtools_view(bam)
    ]
    try:
        bamflow.scan(broken, columns=["qname", "tags"]).read_all()
    except Exception as error:  # the reader raises what the engine met, as pyarrow does
        message = str(error)
        assert str(broken) in message and "decode failed" in message, message
        assert "record 1" in message, message
    else:
        raise AssertionError("decoding the corrupt tags did not fail")


def corrupt_first_tag_type(bam, out):
    """Rewrites the first record's first tag type ('A' of XA:A:z) as '!', in a new BGZF file."""
    import gzip

    data = bytearray(gzip.decompress(bam.read_bytes()))
    at = data.index(b"XAAz")
    data[at + 2] = ord("!")
    out.write_bytes(bgzf(bytes(data)))


def bgzf(data: bytes) -> bytes:
    """BGZF blocks of at most 64 KiB each, and the EOF block."""
    import struct
    import zlib

    blocks = []
    for start in range(0, len(data), 60000):
        chunk = data[start : start + 60000]
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = deflate.compress(chunk) + deflate.flush()
        header = struct.pack("<BBBBIBBHBBHH", 31, 139, 8, 4, 0, 0, 255, 6, 66, 67, 2, len(body) + 25)
        blocks.append(header + body + struct.pack("<II", zlib.crc32(chunk), len(chunk)))
    eof = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
    return b"".join(blocks) + eof


PEAK_RSS = """
import json, resource, sys
import bamflow
rows = 0
for batch in bamflow.scan(sys.argv[1], threads=2):
    rows += batch.num_rows
print(json.dumps({"rows": rows, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_memory_stays_bounded_on_a_file_four_times_larger(bamgen, tmp_path):
    small = generate(bamgen, tmp_path / "small.bam", records=100_000, seed=3)
    large = generate(bamgen, tmp_path / "large.bam", records=400_000, seed=3)

    def scan_peak(bam):
        run = subprocess.run([sys.executable, "-c", PEAK_RSS, str(bam)], check=True, capture_output=True, text=True)
        return json.loads(run.stdout)

    a, b = scan_peak(small), scan_peak(large)
    assert a["rows"] == len(samtools_view(small)) and b["rows"] == len(samtools_view(large))
    assert b["rows"] > 3.9 * a["rows"]
    # Four times the records, not four times the memory: the batch budget bounds it.
    assert b["peak_kb"] < a["peak_kb"] * 1.25 + 16 * 1024, (a, b)
