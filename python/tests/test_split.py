"""One BAM over many workers from Python: plan, scan and convert one task, commit."""

from __future__ import annotations

import pyarrow
import pyarrow.parquet as pq
import pytest

import bamflow
from conftest import samtools_view, sam_lines


def test_the_tasks_of_a_plan_scan_every_record_once_in_order(bams, tmp_path):
    for name, bam in bams.items():
        plan = bamflow.plan(bam, 4, output=tmp_path / f"{name}.json")
        assert plan["records"] == len(samtools_view(bam)), name
        tables = [bamflow.scan(bam, plan=plan, task=k, threads=2).read_all() for k in range(4)]
        assert [t.num_rows for t in tables] == [s["records"] for s in plan["splits"]], name
        assert sam_lines(pyarrow.concat_tables(tables)) == samtools_view(bam), name
    # A plan file's path serves as well as the dict, and a scan may project and filter.
    bam = bams["generated_short"]
    mapped = [
        bamflow.scan(bam, plan=tmp_path / "generated_short.json", task=k, columns=["mapq"],
                     min_mapq=30).read_all().num_rows
        for k in range(4)
    ]
    assert sum(mapped) == len(samtools_view(bam, "-q", "30"))


def test_tasks_converted_then_committed_equal_one_convert(bams, tmp_path):
    bam = bams["generated_short"]
    plan = bamflow.plan(bam, 3, tags=["NM:i"], part_records=500)
    for k in reversed(range(3)):
        bamflow.convert(bam, tmp_path / "out", plan=plan, task=k, tags=["NM:i"], part_records=500)
    manifest = bamflow.commit(tmp_path / "out", plan)
    assert manifest["tasks"] == 3
    assert manifest["counts"]["read"] == len(samtools_view(bam))
    single = bamflow.convert(bam, tmp_path / "single", tags=["NM:i"], part_records=500)
    assert single["counts"] == manifest["counts"]
    ours, theirs = pq.read_table(tmp_path / "out"), pq.read_table(tmp_path / "single")
    assert ours.to_pylist() == theirs.to_pylist()

    with pytest.raises(bamflow.ConvertError, match="settings differ from the plan's: tags"):
        bamflow.convert(bam, tmp_path / "other", plan=plan, task=0)
    with pytest.raises(ValueError, match="plan and task go together"):
        bamflow.scan(bam, plan=plan)
