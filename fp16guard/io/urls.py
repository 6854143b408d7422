"""Is this location a URL? Decided here and only here.

A location is a local path, a ``file://`` URL (also local), or an fsspec URL with another scheme
(``s3://bucket/key``, ``gs://...``, ``memory://...``), which is remote. Everything that must tell
them apart (the store, the cache, lineage, events) asks these functions instead of looking for
``"://"`` itself, so the rule cannot drift between modules.
"""

from __future__ import annotations

import os
import re

__all__ = ["has_scheme", "is_remote", "local_path", "protocol", "as_uri"]

# An RFC 3986 scheme followed by "://": "s3://", "file://", "s3a://", "gcs://".
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def protocol(location: str | os.PathLike) -> str | None:
    """The URL scheme in lower case (``"s3"``, ``"file"``), or None for a plain path."""
    match = _SCHEME.match(str(location))
    return match.group(1).lower() if match else None


def has_scheme(location: str | os.PathLike) -> bool:
    """True for any ``scheme://`` location, ``file://`` included."""
    return protocol(location) is not None


def is_remote(location: str | os.PathLike) -> bool:
    """True for URLs that are not ``file://`` (they need fsspec; no rename, no flock)."""
    return protocol(location) not in (None, "file")


def local_path(location: str | os.PathLike) -> str:
    """The file-system path of a local location (``file://`` prefix removed).

    Raises:
        ValueError: ``location`` is a remote URL.
    """
    text = str(location)
    if is_remote(text):
        raise ValueError(f"{text} is a remote URL, not a local path")
    return text[len("file://") :] if protocol(text) == "file" else text


def as_uri(location: str | os.PathLike) -> str:
    """``location`` as a URI: URLs unchanged, local paths as ``file://<absolute path>``."""
    text = str(location)
    return text if has_scheme(text) else f"file://{os.path.abspath(text)}"
