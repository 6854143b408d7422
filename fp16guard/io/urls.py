"""Is this location a URL? Decided here and only here.

A location is a local path, a ``file://`` URL (also local), or an fsspec URL with another scheme
(``s3://bucket/key``, ``gs://...``, ``memory://...``), which is remote. Everything that must tell
them apart (the store, the cache, lineage, events) asks these functions instead of looking for
``"://"`` itself, so the rule cannot drift between modules.
"""

from __future__ import annotations

import os
import re

__all__ = ["has_scheme", "is_remote", "local_path", "protocol", "as_uri", "fsspec_options", "S3_ENDPOINT_ENV"]

#: Environment variable naming an S3-compatible endpoint (MinIO, moto, Ceph) for every ``s3://``
#: location: the store, the cache and calibration / holdout shards alike.
S3_ENDPOINT_ENV = "FP16GUARD_S3_ENDPOINT_URL"

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


def fsspec_options(location: str | os.PathLike, options: dict | None = None) -> dict:
    """The fsspec options to open ``location`` with, decided here for every reader of URLs.

    For ``s3://`` (and ``s3a://``): the endpoint from ``$FP16GUARD_S3_ENDPOINT_URL`` unless
    ``options`` name one (botocore also honours the standard ``AWS_ENDPOINT_URL`` itself), and no
    listings cache (other writers change buckets under a long-lived process). Credentials are
    never passed here: they come from the usual AWS variables / files or the fsspec config
    (``~/.config/fsspec``), as for any fsspec user.

    Args:
        location: the URL (a plain path gets ``options`` back unchanged).
        options: options given explicitly; they win over the environment.

    Returns:
        A new dict (``options`` is not modified).
    """
    out = dict(options or {})
    if protocol(location) in ("s3", "s3a"):
        endpoint = os.environ.get(S3_ENDPOINT_ENV)
        if endpoint and "endpoint_url" not in out and "endpoint_url" not in out.get("client_kwargs", {}):
            out["endpoint_url"] = endpoint
        out.setdefault("use_listings_cache", False)
    return out
