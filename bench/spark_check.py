#!/usr/bin/env python3
"""Reads a bamflow dataset with Spark's default Parquet reader and checks it against pyarrow.

Spark is the one engine in the mission that brings its own Parquet decoder (parquet-mr plus its
vectorized reader), so it is the one that can disagree with the writer. Not part of CI: it
needs Java 17 and pyspark (a 317 MB wheel).

    python3 -m venv /tmp/spark && /tmp/spark/bin/pip install pyspark==3.5.3 pyarrow
    /tmp/spark/bin/python bench/spark_check.py DATASET_DIR

Prints, for the row count, every text column and every integer column, Spark's and pyarrow's
answers, then OK or MISMATCH (exit status 1).
"""

import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyspark.sql import SparkSession


def main(path):
    table = ds.dataset(path, format="parquet").to_table()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("OFF")
    frame = spark.read.parquet(path)

    checks = [("rows", frame.count(), table.num_rows)]
    text = [f.name for f in table.schema if pa.types.is_string(f.type)]
    for column in text:
        spark_sum = frame.selectExpr(f"sum(length({column}))", f"count({column})").first()
        arrow_sum = (
            pc.sum(pc.utf8_length(table[column])).as_py(),
            len(table[column]) - table[column].null_count,
        )
        checks.append((column, tuple(spark_sum), arrow_sum))
    # Integer columns: every encoding the writer uses for them (PLAIN, deltas, dictionary).
    # The sum of absolute values too: TLEN's signs cancel in its plain sum.
    numbers = [f.name for f in table.schema if pa.types.is_integer(f.type)]
    for column in numbers:
        spark_sum = frame.selectExpr(
            f"sum(cast({column} as long))", f"sum(abs(cast({column} as long)))", f"count({column})"
        ).first()
        values = table[column].cast("int64")
        arrow_sum = (
            pc.sum(values).as_py(),
            pc.sum(pc.abs(values)).as_py(),
            len(values) - values.null_count,
        )
        checks.append((column, tuple(spark_sum), arrow_sum))
    # A page-index-assisted filter: positions of the first reference.
    reference = next((v for v in table["rname"].to_pylist() if v is not None), None)
    if reference is not None:
        lo, hi = 100_000, 200_000
        mask = pc.and_(
            pc.equal(table["rname"].cast("string"), reference),
            pc.and_(pc.greater_equal(table["pos"], lo), pc.less_equal(table["pos"], hi)),
        )
        wanted = pc.sum(mask.cast("int64")).as_py() or 0
        got = frame.filter(
            (frame.rname == reference) & (frame.pos >= lo) & (frame.pos <= hi)
        ).count()
        checks.append((f"{reference}:{lo}-{hi}", got, wanted))

    ok = True
    for name, spark_value, arrow_value in checks:
        same = spark_value == arrow_value
        ok &= same
        print(f"{name:>24}  spark {spark_value}  pyarrow {arrow_value}  {'' if same else 'DIFFERS'}")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
