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
) -> Dict[str, Any]:
    """Convert the BAM file ``input`` into the Parquet dataset folder ``output``.

    Options are those of ``bamflow convert`` (DESIGN §2), with the same defaults: every column,
    zstd level 3, all cores. ``output`` must not exist; it appears complete or not at all.

    ``progress(records, bytes_done, bytes_total)`` is called from this thread a few times a
    second while the engine works, and once more at the end with the totals; returning
    ``False`` cancels (:class:`Cancelled` is raised). Ctrl-C (KeyboardInterrupt) cancels within
    a second. A cancelled conversion publishes nothing and, unless ``resume=True`` (then the
    next call with ``resume=True`` continues from its last checkpoint), leaves nothing behind.

    Returns the dataset's ``_manifest.json`` as a dict.

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
) -> pyarrow.RecordBatchReader:
    """Stream the records of the BAM file ``input`` as Arrow record batches.

    The columns, types, promoted tags and filters are those ``convert`` would write with the
    same options, in record order. Only the columns asked for are decoded. The reader is
    exported through the Arrow C stream interface, so ``pyarrow.Table``, ``polars.from_arrow``
    and DuckDB take it without copying; memory stays within the engine's batch budget
    whatever the file size.

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
    )


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
