"""bamflow: BAM to Parquet and Arrow, every field of every record, on every core.

The same engine, options, schema and errors as the ``bamflow convert`` command::

    import bamflow

    manifest = bamflow.convert("in.bam", "out_dataset", tags=["NM:i"])
    reader = bamflow.scan("in.bam", columns=["rname", "pos", "mapq"])   # pyarrow.RecordBatchReader
    table = reader.read_all()

Every call releases the GIL while the engine works. Memory is bounded by the engine's batch
budget, whatever the file size.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import pyarrow

from . import _bamflow
from ._errors import Cancelled, ConvertError

__all__ = [
    "convert",
    "scan",
    "plan",
    "commit",
    "read_header",
    "profile",
    "verify",
    "export",
    "ConvertError",
    "Cancelled",
]
__version__: str = _bamflow.__version__

PathLike = Union[str, "os.PathLike[str]"]
#: A filter plugin: the library's path, or ``{"path": ..., "sha256": ..., "config": {...}}``.
Plugin = Union[PathLike, Mapping[str, Any]]
#: A split plan: the path of a plan file, its JSON text, or the dict :func:`plan` returns.
Plan = Union[PathLike, Mapping[str, Any]]
#: ``progress(records, bytes_done, bytes_total)``; returning ``False`` cancels.
Progress = Callable[[int, int, int], Optional[bool]]


def convert(
    input: PathLike,
    output: PathLike,
    *,
    columns: Optional[Sequence[str]] = None,
    tags: Optional[Sequence[str]] = None,
    min_mapq: Optional[int] = None,
    include_flags: Optional[int] = None,
    exclude_flags: Optional[int] = None,
    regions: Optional[Sequence[str]] = None,
    plugins: Optional[Sequence[Plugin]] = None,
    threads: Optional[int] = None,
    zstd_level: Optional[int] = None,
    part_records: Optional[int] = None,
    resume: bool = False,
    progress: Optional[Progress] = None,
    plan: Optional[Plan] = None,
    task: Optional[int] = None,
) -> Dict[str, Any]:
    """Convert the BAM file ``input`` into the Parquet dataset folder ``output``.

    Options are those of ``bamflow convert`` (DESIGN §2), with the same defaults: every column,
    zstd level 3, all cores. ``output`` must not exist; it appears complete or not at all.

    ``progress(records, bytes_done, bytes_total)`` is called from this thread a few times a
    second while the engine works, and once more at the end with the totals; returning
    ``False`` cancels (:class:`Cancelled` is raised). Ctrl-C (KeyboardInterrupt) cancels within
    a second. A cancelled conversion publishes nothing and, unless ``resume=True`` (then the
    next call with ``resume=True`` continues from its last checkpoint), leaves nothing behind.

    With ``plan`` and ``task`` (``bamflow convert --plan --task``), only that task's split is
    converted, into ``output``'s staging folder, resuming its own checkpoint; :func:`commit`
    publishes the dataset once every task is done. The options must be the plan's.

    Returns the dataset's ``_manifest.json`` as a dict (a task's own, for a task).

    Raises:
        ConvertError: naming the file, the stage and the offset or record.
        ValueError: for an option that cannot be used, naming it.
    """
    manifest = _bamflow.convert(
        os.fspath(input),
        os.fspath(output),
        columns=_strings(columns, "columns"),
        tags=_strings(tags, "tags"),
        min_mapq=min_mapq,
        include_flags=include_flags,
        exclude_flags=exclude_flags,
        regions=_strings(regions, "regions"),
        plugins=[_plugin(p) for p in plugins or ()],
        threads=threads,
        zstd_level=zstd_level,
        part_records=part_records,
        resume=resume,
        progress=progress,
        plan=_plan_json(plan),
        task=task,
    )
    return json.loads(manifest)


def scan(
    input: PathLike,
    *,
    columns: Optional[Sequence[str]] = None,
    tags: Optional[Sequence[str]] = None,
    min_mapq: Optional[int] = None,
    include_flags: Optional[int] = None,
    exclude_flags: Optional[int] = None,
    regions: Optional[Sequence[str]] = None,
    threads: Optional[int] = None,
    batch_records: Optional[int] = None,
    plan: Optional[Plan] = None,
    task: Optional[int] = None,
) -> pyarrow.RecordBatchReader:
    """Stream the records of the BAM file ``input`` as Arrow record batches.

    The columns, types, promoted tags and filters are those ``convert`` would write with the
    same options, in record order. Only the columns asked for are decoded. The reader is
    exported through the Arrow C stream interface, so ``pyarrow.Table``, ``polars.from_arrow``
    and DuckDB take it without copying; memory stays within the engine's batch budget
    whatever the file size.

    With ``plan`` and ``task``, only that task's split of the records is read (one worker of
    many: a Spark partition); columns and filters may differ from the plan's.

    Raises:
        ConvertError: when the file cannot be opened or its header read; errors met later
            are raised by the reader as it reaches them.
    """
    return _bamflow.scan(
        os.fspath(input),
        columns=_strings(columns, "columns"),
        tags=_strings(tags, "tags"),
        min_mapq=min_mapq,
        include_flags=include_flags,
        exclude_flags=exclude_flags,
        regions=_strings(regions, "regions"),
        threads=threads,
        batch_records=batch_records,
        plan=_plan_json(plan),
        task=task,
    )


def plan(
    input: PathLike,
    tasks: int,
    *,
    output: Optional[PathLike] = None,
    columns: Optional[Sequence[str]] = None,
    tags: Optional[Sequence[str]] = None,
    min_mapq: Optional[int] = None,
    include_flags: Optional[int] = None,
    exclude_flags: Optional[int] = None,
    part_records: Optional[int] = None,
    threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Split the BAM file ``input`` into ``tasks`` tasks at record boundaries, as
    ``bamflow plan``: one pass that inflates and frames every record, checked to cover each
    record once. The options are those the tasks will convert with (the plan records them).

    Returns the plan as a dict, also written to ``output`` when given; pass either to
    :func:`convert`, :func:`scan` and :func:`commit` as ``plan``.

    Raises:
        ConvertError: when the file cannot be read, naming the stage and offset.
    """
    text = _bamflow.plan(
        os.fspath(input),
        tasks,
        columns=_strings(columns, "columns"),
        tags=_strings(tags, "tags"),
        min_mapq=min_mapq,
        include_flags=include_flags,
        exclude_flags=exclude_flags,
        part_records=part_records,
        threads=threads,
    )
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return json.loads(text)


def commit(output: PathLike, plan: Plan) -> Dict[str, Any]:
    """Publish the dataset ``output`` from the finished tasks of ``plan``, as
    ``bamflow commit``: every task's manifest and parts are checked against the plan first.

    Returns the dataset's ``_manifest.json`` as a dict (``"tasks"`` holds the task count).

    Raises:
        ConvertError: a task is not done or does not match the plan (named), at stage
            ``publish``; nothing is removed.
    """
    return json.loads(_bamflow.commit(os.fspath(output), _plan_json(plan)))


def _plan_json(plan: Optional[Plan]) -> Optional[str]:
    """A plan keyword as the JSON text of a plan file."""
    if plan is None:
        return None
    if isinstance(plan, Mapping):
        return json.dumps(plan)
    if isinstance(plan, str) and plan.lstrip().startswith("{"):
        return plan
    with open(plan, encoding="utf-8") as f:
        return f.read()


def read_header(path: PathLike) -> str:
    """The SAM header of a BAM file or of a bamflow dataset folder, as
    ``samtools view -H --no-PG`` prints it."""
    return _bamflow.read_header(os.fspath(path))


def profile(path: PathLike, *, threads: Optional[int] = None) -> Dict[str, Any]:
    """What ``bamflow profile`` prints: the header's references, a sample's read lengths,
    tags and sort order, and the batch plan a conversion would use."""
    return json.loads(_bamflow.profile(os.fspath(path), threads=threads))


def verify(dataset: PathLike, bam: PathLike, *, threads: Optional[int] = None) -> Dict[str, Any]:
    """Compare the dataset folder ``dataset`` with the BAM ``bam``, as ``bamflow verify``:
    header, record count and every field of every record.

    Returns ``{"identical": bool, "records": n, "differing": n, "differences": [...]}``, each
    difference with ``record`` (from 1; 0 for the header or the count), ``field``,
    ``dataset`` and ``bam``.

    Raises:
        ValueError: the dataset cannot hold the whole BAM (written with filters or without
            every column), or is not a complete dataset.
        ConvertError: the BAM cannot be read.
    """
    report = json.loads(_bamflow.verify(os.fspath(dataset), os.fspath(bam), threads=threads))
    report["identical"] = report["differing"] == 0
    return report


def export(
    dataset: PathLike,
    output: PathLike,
    *,
    threads: Optional[int] = None,
    allow_partial: bool = False,
) -> int:
    """Write the dataset folder ``dataset`` back as the BAM file ``output``, as
    ``bamflow export``: its ``samtools view -h --no-PG`` equals the source's. Returns the
    records written.

    With ``allow_partial=True`` a dataset that does not hold everything (written with
    filters, a column subset, or promoted tags before schema version 2) is written with
    what it has, and a
    ``UserWarning`` says what differs from the source.

    Raises:
        ValueError: the dataset cannot be put back whole (written with filters, a column
            subset, or version 1 promoted tags) and ``allow_partial`` is false, is not a complete
            dataset, or a row is not a record.
        OSError: the BAM cannot be written.
    """
    return _bamflow.export(
        os.fspath(dataset), os.fspath(output), threads=threads, allow_partial=allow_partial
    )


def _strings(values: Optional[Iterable[str]], name: str) -> Optional[List[str]]:
    # A bare string would be taken as a list of one-letter names.
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not a string")
    return None if values is None else [str(v) for v in values]


def _plugin(plugin: Plugin):
    if isinstance(plugin, Mapping):
        unknown = set(plugin) - {"path", "sha256", "config"}
        if unknown:
            raise ValueError(f"plugins: unknown key(s) {sorted(unknown)}")
        if "path" not in plugin:
            raise ValueError("plugins: a plugin needs its 'path'")
        return (
            os.fspath(plugin["path"]),
            plugin.get("sha256"),
            json.dumps(plugin.get("config") or {}),
        )
    return (os.fspath(plugin), None, "{}")
