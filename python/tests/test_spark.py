"""BAM read directly by a real Spark (local[2]): counts, per-reference counts and MAPQ sums
equal samtools', and plan → tasks → commit run as Spark tasks equals one convert."""

from __future__ import annotations

import os
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

import bamflow
from conftest import samtools_view


@pytest.fixture(scope="module")
def spark():
    # Executors run this venv's Python, where bamflow is installed.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    import bamflow.spark

    session = (
        SparkSession.builder.master("local[2]")
        .appName("bamflow-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    bamflow.spark.register(session)
    yield session
    session.stop()


def fields(bam):
    return [line.split("\t") for line in samtools_view(bam)]


@pytest.mark.parametrize("name", ["generated_short", "generated_long", "generated_unaligned"])
def test_spark_counts_and_sums_what_samtools_prints(bams, spark, name):
    from pyspark.sql import functions as F

    bam = bams[name]
    records = fields(bam)
    df = spark.read.format("bam").option("tasks", 3).load(str(bam))
    assert df.rdd.getNumPartitions() == 3
    assert df.count() == len(records)

    per_reference = {r["rname"]: r["count"] for r in df.groupBy("rname").count().collect()}
    expected = Counter(None if f[2] == "*" else f[2] for f in records)
    assert per_reference == dict(expected)

    mapqs = [int(f[4]) for f in records if f[4] != "255"]
    assert (df.agg(F.sum("mapq")).first()[0] or 0) == sum(mapqs)
    # Spark's own filters over the engine's rows (MAPQ 255 is null, so not >= 30).
    assert df.filter("mapq >= 30").count() == sum(1 for q in mapqs if q >= 30)
    assert df.filter(F.col("flag").bitwiseAND(4) == 0).count() == sum(
        1 for f in records if int(f[1]) & 4 == 0
    )


def test_options_project_filter_and_promote(bams, spark):
    bam = bams["generated_short"]
    df = (
        spark.read.format("bam")
        .option("tasks", 2)
        .option("columns", "rname,pos,NM")
        .option("tags", "NM:i")
        .option("min_mapq", 30)
        .load(str(bam))
    )
    assert df.columns == ["rname", "pos", "NM"]
    assert df.count() == len(samtools_view(bam, "-q", "30"))


def test_spark_runs_plan_tasks_and_commit_as_one_convert(bams, spark, tmp_path):
    import bamflow.spark

    bam = bams["generated_short"]
    manifest = bamflow.spark.convert(
        spark, str(bam), str(tmp_path / "out"), tasks=3, tags=["NM:i"], part_records=700
    )
    assert manifest["tasks"] == 3
    single = bamflow.convert(bam, tmp_path / "single", tags=["NM:i"], part_records=700)
    assert manifest["counts"] == single["counts"]
    ours, theirs = pq.read_table(tmp_path / "out"), pq.read_table(tmp_path / "single")
    assert ours.to_pylist() == theirs.to_pylist()
