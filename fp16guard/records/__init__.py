"""Typed records of a run and the one place they become JSON.

- :mod:`fp16guard.records.verification`: ``verification.json`` (:class:`VerificationReport`,
  per-output :class:`OutputFigures`) and :func:`worst_rel_error`, the one definition of a run's
  worst relative error;
- :mod:`fp16guard.records.manifest`: ``manifest.json`` (:class:`Manifest`);
- :mod:`fp16guard.records.serialize`: strict JSON (a non-finite number is never written as one).
"""

from fp16guard.records.manifest import FileRecord, Manifest
from fp16guard.records.serialize import dumps, jsonable, read_float, write_json
from fp16guard.records.verification import OutputFigures, VerificationReport, worst_rel_error

__all__ = [
    "FileRecord",
    "Manifest",
    "OutputFigures",
    "VerificationReport",
    "dumps",
    "jsonable",
    "read_float",
    "worst_rel_error",
    "write_json",
]
