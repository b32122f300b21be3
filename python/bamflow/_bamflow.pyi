# The native module; `bamflow` wraps it and is what to import.
from typing import Any, List, Optional, Tuple

import pyarrow

__version__: str

def convert(
    input: str,
    output: str,
    *,
    columns: Optional[List[str]] = ...,
    tags: Optional[List[str]] = ...,
    min_mapq: Optional[int] = ...,
    include_flags: Optional[int] = ...,
    exclude_flags: Optional[int] = ...,
    regions: Optional[List[str]] = ...,
    plugins: List[Tuple[str, Optional[str], str]] = ...,
    threads: Optional[int] = ...,
    zstd_level: Optional[int] = ...,
    part_records: Optional[int] = ...,
    resume: bool = ...,
    progress: Optional[Any] = ...,
    plan: Optional[str] = ...,
    task: Optional[int] = ...,
) -> str: ...
def scan(
    path: str,
    *,
    columns: Optional[List[str]] = ...,
    tags: Optional[List[str]] = ...,
    min_mapq: Optional[int] = ...,
    include_flags: Optional[int] = ...,
    exclude_flags: Optional[int] = ...,
    regions: Optional[List[str]] = ...,
    threads: Optional[int] = ...,
    batch_records: Optional[int] = ...,
    plan: Optional[str] = ...,
    task: Optional[int] = ...,
) -> pyarrow.RecordBatchReader: ...
def plan(
    path: str,
    tasks: int,
    *,
    columns: Optional[List[str]] = ...,
    tags: Optional[List[str]] = ...,
    min_mapq: Optional[int] = ...,
    include_flags: Optional[int] = ...,
    exclude_flags: Optional[int] = ...,
    part_records: Optional[int] = ...,
    threads: Optional[int] = ...,
) -> str: ...
def commit(output: str, plan: str) -> str: ...
def read_header(path: str) -> str: ...
def profile(path: str, threads: Optional[int] = ...) -> str: ...
def verify(dataset: str, bam: str, threads: Optional[int] = ...) -> str: ...
def export(
    dataset: str, output: str, threads: Optional[int] = ..., allow_partial: bool = ...
) -> int: ...
