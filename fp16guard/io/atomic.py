"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Every artifact fp16guard writes goes through here: the content is written to a temporary file in
the same folder, flushed and fsynced, then renamed over the target (``os.replace`` is atomic on
POSIX within one file system).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    The caller writes the file at the yielded path by any means (``onnx.save``, ``pq.write_table``).
    On an exception the temporary file is removed and ``target`` is left untouched.

    Args:
        target: final path of the file. Its parent folder is created if missing.

    Yields:
        A path in the same folder, not yet existing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise RuntimeError(f"atomic write of {target}: nothing was written")
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically. Returns the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically. Returns the target path."""
    return write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (plus a final newline) atomically."""
    return write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
