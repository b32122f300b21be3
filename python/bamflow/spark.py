"""BAM read directly by Spark (PySpark 4.x): a Python data source, and plan → tasks → commit
run as Spark tasks.

::

    import bamflow.spark

    bamflow.spark.register(spark)
    reads = spark.read.format("bam").option("tasks", 64).load("/data/x.bam")
    reads.groupBy("rname").count().show()

    bamflow.spark.convert(spark, "/data/x.bam", "/lake/x", tasks=64)   # one dataset

The driver makes a split plan (``bamflow.plan``: record boundaries found by one pass over the
file); each partition is one split, read on an executor by the engine and handed to Spark as
Arrow record batches, with no Python per row. The BAM must be readable at the same path on
every executor (shared storage), as for any file source.

Options of ``spark.read.format("bam")``: ``tasks`` (partitions; default: the session's default
parallelism), ``columns`` and ``tags`` (comma-separated, as ``bamflow convert``), ``min_mapq``,
``include_flags``, ``exclude_flags`` (pushed into the engine: records are dropped before they
are decoded), ``threads`` (engine workers per partition, default 1).

Filters written in a query (``df.filter("mapq >= 30")``) are not pushed down: Spark 4.1's
``pushFilters`` is called only for queries that have filters, and a later query on the same
DataFrame without any reuses the reader as the last pushdown left it (seen with 4.1.4: a
``mapq >= 30`` pushed once kept filtering every later count). The options above push the same
filters safely. Projection has no hook in the Python data source API: ``columns`` does it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pyarrow

import bamflow

try:
    from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
    from pyspark.sql.types import (
        ArrayType,
        DataType,
        FloatType,
        IntegerType,
        LongType,
        ShortType,
        StringType,
        StructField,
        StructType,
    )
except ImportError as error:  # pragma: no cover - only without pyspark
    raise ImportError("bamflow.spark needs PySpark 4.0 or later: pip install pyspark") from error

__all__ = ["BamDataSource", "register", "convert"]


def register(spark) -> None:
    """Registers the ``bam`` format with ``spark`` (a ``SparkSession``)."""
    spark.dataSource.register(BamDataSource)


def convert(
    spark,
    input: str,
    output: str,
    *,
    tasks: Optional[int] = None,
    **options: Any,
) -> Dict[str, Any]:
    """Converts ``input`` into the dataset ``output`` as ``tasks`` Spark tasks: the plan is
    made on the driver, each task converts its split on an executor (``bamflow convert
    --plan --task``: a retried task resumes its checkpoint), then the driver commits.

    ``options`` are ``bamflow.convert``'s (``columns``, ``tags``, ``min_mapq``,
    ``part_records``…), the same for every task. Returns the dataset's manifest.
    """
    tasks = tasks or spark.sparkContext.defaultParallelism
    plan_options = {k: v for k, v in options.items() if k in _PLAN_OPTIONS}
    plan = json.dumps(bamflow.plan(input, tasks, **plan_options))
    task_options = dict(options, threads=options.get("threads", 1))

    def run(task: int) -> int:
        manifest = bamflow.convert(input, output, plan=plan, task=task, **task_options)
        return manifest["counts"]["read"]

    rdd = spark.sparkContext.parallelize(range(tasks), tasks)
    rdd.map(run).collect()
    return bamflow.commit(output, plan)


_PLAN_OPTIONS = {"columns", "tags", "min_mapq", "include_flags", "exclude_flags", "part_records"}


def _spark_type(arrow: pyarrow.DataType) -> DataType:
    """The Spark type of a dataset column (Spark has no unsigned integers; references are
    their names)."""
    if pyarrow.types.is_dictionary(arrow) or pyarrow.types.is_string(arrow):
        return StringType()
    if pyarrow.types.is_uint8(arrow):
        return ShortType()
    if pyarrow.types.is_uint16(arrow) or pyarrow.types.is_int32(arrow):
        return IntegerType()
    if pyarrow.types.is_int64(arrow):
        return LongType()
    if pyarrow.types.is_float32(arrow):
        return FloatType()
    if pyarrow.types.is_list(arrow):
        return ArrayType(_spark_type(arrow.value_type), containsNull=False)
    raise TypeError(f"no Spark type for {arrow}")


def _arrow_type(spark: DataType) -> pyarrow.DataType:
    """The Arrow type Spark reads a column of type ``spark`` from."""
    if isinstance(spark, StringType):
        return pyarrow.string()
    if isinstance(spark, ShortType):
        return pyarrow.int16()
    if isinstance(spark, IntegerType):
        return pyarrow.int32()
    if isinstance(spark, LongType):
        return pyarrow.int64()
    if isinstance(spark, FloatType):
        return pyarrow.float32()
    if isinstance(spark, ArrayType):
        item = pyarrow.field("element", _arrow_type(spark.elementType), nullable=False)
        return pyarrow.list_(item)
    raise TypeError(f"no Arrow type for {spark}")


def _split(value: Optional[str]) -> Optional[List[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _integer(value: Optional[str]) -> Optional[int]:
    return None if value is None else int(value, 0)


class BamDataSource(DataSource):
    """``spark.read.format("bam").load(path)``: the dataset schema, one partition per split."""

    @classmethod
    def name(cls) -> str:
        return "bam"

    def _scan_options(self) -> Dict[str, Any]:
        o = self.options
        return {
            "columns": _split(o.get("columns")),
            "tags": _split(o.get("tags")),
            "min_mapq": _integer(o.get("min_mapq")),
            "include_flags": _integer(o.get("include_flags")),
            "exclude_flags": _integer(o.get("exclude_flags")),
        }

    def schema(self) -> StructType:
        # The engine's own schema for these options, read off an empty scan of no records.
        path = self.options["path"]
        options = self._scan_options()
        reader = bamflow.scan(path, batch_records=1, threads=1, **options)
        arrow = reader.schema
        reader.close()
        return StructType(
            [StructField(f.name, _spark_type(f.type), f.nullable) for f in arrow]
        )

    def reader(self, schema: StructType) -> "BamReader":
        tasks = self.options.get("tasks")
        if tasks is None:
            from pyspark import SparkContext

            context = SparkContext._active_spark_context
            tasks = context.defaultParallelism if context is not None else 1
        return BamReader(
            path=self.options["path"],
            tasks=int(tasks),
            options=self._scan_options(),
            threads=int(self.options.get("threads", 1)),
            schema=schema,
        )


class BamReader(DataSourceReader):
    """Plans on the driver; reads one split per partition on the executors."""

    def __init__(
        self,
        *,
        path: str,
        tasks: int,
        options: Dict[str, Any],
        threads: int,
        schema: StructType,
    ) -> None:
        self.path = path
        self.options = options
        self.threads = threads
        self.arrow_schema = pyarrow.schema(
            [pyarrow.field(f.name, _arrow_type(f.dataType), f.nullable) for f in schema.fields]
        )
        # A string crosses to the executors as it is (no shared plan file needed).
        self.plan = json.dumps(bamflow.plan(path, tasks, threads=threads))
        self.tasks = tasks

    def partitions(self) -> Sequence[InputPartition]:
        return [InputPartition(task) for task in range(self.tasks)]

    def read(self, partition: InputPartition) -> Iterator[pyarrow.RecordBatch]:
        stream = bamflow.scan(
            self.path,
            plan=self.plan,
            task=partition.value,
            threads=self.threads,
            **self.options,
        )
        for batch in stream:
            yield batch.cast(self.arrow_schema)
