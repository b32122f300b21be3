"""The exceptions bamflow raises (defined in Python so they pickle and subclass normally)."""

from __future__ import annotations

from typing import Optional


class ConvertError(Exception):
    """A BAM could not be converted or read.

    Attributes:
        path: the input file (or dataset folder).
        stage: where it failed: ``open``, ``read``, ``inflate``, ``header``, ``frame``,
            ``filter``, ``decode``, ``write``, ``checkpoint``, ``publish`` or ``output``.
        kind: ``io``, ``invalid_input``, ``limit``, ``checkpoint``, ``plugin`` or ``internal``.
        offset: the compressed byte offset the failure refers to, when it has one.
        record: the record number (from 1) it refers to, when it has one.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str,
        stage: str,
        kind: str,
        offset: Optional[int] = None,
        record: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.stage = stage
        self.kind = kind
        self.offset = offset
        self.record = record

    def __reduce__(self):  # keyword-only arguments survive pickling (multiprocessing)
        return (_rebuild, (type(self), self.message, self.__dict__))


class Cancelled(ConvertError):
    """The conversion was stopped by its progress callback (it returned ``False``)."""


def _rebuild(cls, message, state):
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
