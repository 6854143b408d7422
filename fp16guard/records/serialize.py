"""The one place records become JSON: strict JSON, where a non-finite number is never a number.

JSON has no token for infinity or NaN, and Python's ``json`` writes ``Infinity``/``NaN`` unless
told not to, which strict readers (browsers, ``jq``, Go, the Prefect API) reject. Here:

- ``+inf`` is written as the string ``"inf"`` and ``-inf`` as ``"-inf"`` (an unbounded figure:
  the reader must see it is not a small number);
- ``NaN`` is written as ``null`` (no figure);
- dataclass records (see :mod:`fp16guard.records`) are written through their ``to_dict``.

:func:`read_float` is the inverse for one figure: numbers, ``"inf"``/``"-inf"`` strings and
``null`` come back as ``float`` or None.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["dumps", "jsonable", "read_float", "write_json"]


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that :func:`json.dumps` accepts with ``allow_nan=False``.

    Dicts, lists, tuples and sets are copied recursively (dict keys become strings); records
    with a ``to_dict`` method and plain dataclasses become dicts; numpy scalars become Python
    numbers; anything else unknown becomes ``str(obj)``.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [jsonable(v) for v in sorted(obj, key=str)]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        try:
            return jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def dumps(obj: Any, *, indent: int | None = None, sort_keys: bool = True) -> str:
    """Strict JSON text of ``obj`` (see :func:`jsonable`); never contains ``Infinity``/``NaN``."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted strict JSON plus a newline, atomically.

    Side effect: creates ``target``'s folder if missing (through :mod:`fp16guard.io.atomic`).

    Returns:
        The target path.
    """
    from fp16guard.io.atomic import write_text

    return write_text(target, dumps(obj, indent=2) + "\n")


def read_float(value: Any) -> float | None:
    """One figure as written by :func:`dumps` (or by older runs): a number, ``"inf"``, ``"-inf"``,
    ``"nan"`` or None. Returns a float (possibly infinite) or None for no figure; booleans and
    unparseable values are None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = float(value)
        return None if math.isnan(value) else value
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return None if math.isnan(parsed) else parsed
    return None
