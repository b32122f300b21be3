"""convert and scan reproduce `samtools view`: the header, and every field of every record."""

from __future__ import annotations

import subprocess

import pyarrow.parquet as pq
import pytest

import bamflow
from conftest import samtools_view, sam_lines


def samtools_header(bam):
    return subprocess.run(
        ["samtools", "view", "-H", "--no-PG", str(bam)], check=True, capture_output=True, text=True
    ).stdout


def test_every_case_converts_to_what_samtools_prints(bams, tmp_path):
    for name, bam in bams.items():
        out = tmp_path / name
        manifest = bamflow.convert(bam, out, threads=2)
        expected = samtools_view(bam)
        table = pq.read_table(out)
        assert manifest["counts"]["read"] == len(expected), name
        assert manifest["counts"]["written"] == table.num_rows == len(expected), name
        assert sam_lines(table) == expected, name
        assert bamflow.read_header(out) == samtools_header(bam), name
        assert bamflow.read_header(bam) == samtools_header(bam), name


def test_every_case_scans_to_what_samtools_prints(bams):
    for name, bam in bams.items():
        table = bamflow.scan(bam, threads=2).read_all()
        assert sam_lines(table) == samtools_view(bam), name


def test_scan_has_the_schema_convert_writes(bams, tmp_path):
    bam = bams["generated_short"]
    options = dict(columns=["qname", "rname", "pos", "NM"], tags=["NM:i"], min_mapq=20)
    bamflow.convert(bam, tmp_path / "out", **options)
    written = pq.read_table(tmp_path / "out")
    scanned = bamflow.scan(bam, **options).read_all()
    assert scanned.schema.names == written.schema.names == ["qname", "rname", "pos", "NM"]
    assert scanned.to_pylist() == written.to_pylist()
    assert scanned.num_rows == len(samtools_view(bams["generated_short"], "-q", "20"))


def test_filters_select_what_samtools_selects(bams):
    bam = bams["generated_short"]
    cases = [
        (dict(min_mapq=30), ["-q", "30"]),
        (dict(include_flags=0x40), ["-f", "0x40"]),
        (dict(exclude_flags=0x10), ["-F", "0x10"]),
    ]
    for options, flags in cases:
        table = bamflow.scan(bam, **options).read_all()
        expected = samtools_view(bam, *flags)
        assert 0 < len(expected) < len(samtools_view(bam)), options
        assert sam_lines(table) == expected, options


def test_regions_select_what_samtools_selects(bams, tmp_path):
    bam = bams["generated_short"]
    subprocess.run(["samtools", "index", str(bam)], check=True)
    regions = ["chr1:1-200000", "chr2"]
    table = bamflow.scan(bam, regions=regions).read_all()
    expected = samtools_view(bam, regions=regions)
    assert 0 < len(expected) < len(samtools_view(bam))
    assert sam_lines(table) == expected


def test_bad_options_name_their_keyword(bams):
    with pytest.raises(ValueError, match="zstd_level"):
        bamflow.convert(bams["cigars"], "/nonexistent/never", zstd_level=99)
    with pytest.raises(ValueError, match="columns"):
        bamflow.scan(bams["cigars"], columns=["nope"])
    with pytest.raises(TypeError, match="list of strings"):
        bamflow.scan(bams["cigars"], columns="qname")


def test_verify_says_identical_and_names_a_difference(bams, tmp_path):
    bam = bams["generated_short"]
    bamflow.convert(bam, tmp_path / "out", tags=["NM:i"])
    report = bamflow.verify(tmp_path / "out", bam)
    assert report["identical"] and report["records"] == len(samtools_view(bam)), report

    report = bamflow.verify(tmp_path / "out", bams["generated_unaligned"])
    assert not report["identical"]
    assert report["differences"][0]["field"].startswith("header line"), report

    bamflow.convert(bam, tmp_path / "filtered", min_mapq=30)
    with pytest.raises(ValueError, match="written with filters"):
        bamflow.verify(tmp_path / "filtered", bam)


def test_export_writes_back_what_samtools_printed(bams, tmp_path):
    for name, bam in bams.items():
        bamflow.convert(bam, tmp_path / name)
        out = tmp_path / f"{name}.exported.bam"
        records = bamflow.export(tmp_path / name, out)
        assert records == len(samtools_view(bam)), name
        assert samtools_view(out, "-h") == samtools_view(bam, "-h"), name
    # Promoted tags go back where they stood.
    bam = bams["generated_short"]
    bamflow.convert(bam, tmp_path / "promoted", tags=["MD:Z", "NM:i"])
    bamflow.export(tmp_path / "promoted", tmp_path / "promoted.bam")
    assert samtools_view(tmp_path / "promoted.bam", "-h") == samtools_view(bam, "-h")


def test_export_allow_partial_writes_what_the_dataset_has_and_warns(bams, tmp_path):
    bam = bams["generated_short"]
    bamflow.convert(bam, tmp_path / "filtered", min_mapq=30)
    with pytest.raises(ValueError, match="written with filters"):
        bamflow.export(tmp_path / "filtered", tmp_path / "never.bam")
    with pytest.warns(UserWarning, match="written with filters"):
        records = bamflow.export(tmp_path / "filtered", tmp_path / "kept.bam", allow_partial=True)
    kept = samtools_view(bam, "-h", "-q", "30")
    assert samtools_view(tmp_path / "kept.bam", "-h") == kept
    assert records == len([line for line in kept if not line.startswith("@")])
