"""Content digests. Cache keys and lineage use these, never paths or modification times."""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20  # 1 MiB reads keep memory flat for multi-GB models


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """Return the hex sha256 of UTF-8 ``text``."""
    return sha256_bytes(text.encode("utf-8"))
