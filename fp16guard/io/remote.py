"""Shards behind a URL: listing and reading objects of any fsspec file system.

A calibration or holdout location may be an fsspec URL (``s3://bucket/prefix``, ``gs://...``,
``memory://...``; :func:`fp16guard.io.urls.is_remote` decides). It is expanded by the rules of a
local location (:func:`fp16guard.io.shards.discover_shards`): a prefix ("folder") gives its
``*.npz`` objects, then its ``*.json`` objects, each sorted, not recursing; a glob gives the
objects it matches; one object is one file. Each shard keeps the object's URL, never its bytes,
so whichever process measures it (a Dask worker on another host included) opens it itself.

Options (the S3 endpoint) come from :func:`fp16guard.io.urls.fsspec_options`, the rule the store
uses; credentials from the environment or the fsspec config, never from fp16guard.

Errors are one line each. Bad input, exit status 2 (:class:`DataError`): a missing bucket, a
prefix with no object, a missing object, access denied, no fsspec package for the scheme. The
environment, exit status 3 (:class:`EnvironmentFailure`): any other error of the file system or
the network (a refused connection, a timeout), naming the URL and the cause.
"""

from __future__ import annotations

import glob as globlib
import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Iterator, Sequence

from fp16guard.errors import DataError, EnvironmentFailure, UserError
from fp16guard.io.urls import fsspec_options, protocol

__all__ = ["expand", "read_bytes", "sha256", "sha256_many", "size", "open_binary", "url_errors", "DIGEST_THREADS"]

#: Objects hashed at once by :func:`sha256_many` (an object store's latency, not its bandwidth,
#: bounds one-at-a-time hashing of many small shards).
DIGEST_THREADS = 8
_CHUNK = 1 << 20  # 1 MiB: memory stays flat while hashing a large object
_PEEK_BLOCK = 1 << 18  # 256 KiB range reads: a .npz's headers without its arrays
# Schemes whose first path segment is a bucket / container, which may itself be missing.
_BUCKETED = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss")


def _fs(url: str, what: str | None = None):
    """``(file system, path)`` for ``url``; DataError (naming ``what``, default the URL) when no
    fsspec package serves its scheme."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **fsspec_options(url))
    except (ImportError, ValueError) as exc:
        scheme = protocol(url)
        hint = " (pip install s3fs)" if scheme in ("s3", "s3a") else (" (pip install gcsfs)" if scheme in ("gs", "gcs") else "")
        raise DataError(f"{what or url} cannot be opened: no usable fsspec file system for '{scheme}://' ({_cause(exc)}); expected a URL whose fsspec package is installed{hint}") from None


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 200:
        text = text[:197] + "..."
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


def _is_storage_error(exc: BaseException) -> bool:
    """An error raised by a file system or its network stack (not a bug of ours)."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "fsspec")


@contextmanager
def url_errors(what: str, missing: str = "does not exist") -> Iterator[None]:
    """Turn file-system errors inside the block into one-line errors naming ``what``.

    Args:
        what: the thing being read, e.g. ``"shard s3://b/calib/a.npz"``.
        missing: the rest of the sentence for "not found" (what was expected).

    Raises:
        DataError: not found, or access denied (bad input: the user named it).
        EnvironmentFailure: any other error of the file system or the network.
    """
    try:
        yield
    except (UserError, EnvironmentFailure):
        raise
    except FileNotFoundError:
        raise DataError(f"{what} {missing}") from None
    except PermissionError as exc:
        raise DataError(f"{what} cannot be read: access denied ({_cause(exc)}); expected credentials that may read it (AWS_* variables or ~/.aws for s3://, or the fsspec config)") from None
    except Exception as exc:
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            raise DataError(f"{what} cannot be read: no credentials ({_cause(exc)}); expected AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws or the fsspec config") from None
        if _is_storage_error(exc):
            raise EnvironmentFailure(f"cannot read {what}: {_cause(exc)}") from None
        raise


def _missing(fs, path: str, location: str, role: str) -> DataError:
    """Why ``location`` names nothing: its bucket is missing, or no object is at or under it."""
    if protocol(location) in _BUCKETED:
        bucket = path.split("/", 1)[0]
        with url_errors(f"{role} data {location}"):
            exists = fs.exists(bucket)
        if not exists:
            return DataError(f"{role} data {location}: bucket '{bucket}' does not exist (or these credentials cannot see it); expected an existing bucket holding .npz shards")
    return DataError(
        f"{role} data {location} does not exist: no object at or under it; expected a prefix holding .npz objects (one shard each), "
        f"one .npz or Polygraphy JSON object, or a glob"
    )


def expand(location: str, role: str = "calibration") -> list[str]:
    """The object URLs a remote location stands for, in shard order (see the module docstring).

    Args:
        location: an fsspec URL: a prefix, one object, or a glob (``s3://b/calib/*.npz``).
        role: "calibration" or "holdout", for messages.

    Returns:
        Canonical object URLs (``fs.unstrip_protocol``): the same object is spelt one way.

    Raises:
        DataError: the bucket is missing, nothing is at or under the location, a prefix holds no
            ``.npz`` or ``.json`` object, a glob matches no object.
        EnvironmentFailure: the file system or the network failed.
    """
    fs, path = _fs(location, f"{role} data {location}")
    with url_errors(f"{role} data {location}"):
        if globlib.has_magic(path):
            found = sorted(name for name, info in fs.glob(path, detail=True).items() if info.get("type") == "file")
            if not found:
                if protocol(location) in _BUCKETED and not fs.exists(path.split("/", 1)[0]):
                    raise _missing(fs, path, location, role)
                raise DataError(f"{role} pattern {location} matches no object; expected .npz or Polygraphy JSON objects")
            return [fs.unstrip_protocol(name) for name in found]
        if fs.isdir(path):
            names = sorted(e["name"] for e in fs.ls(path, detail=True) if e.get("type") == "file")
            found = [n for n in names if n.endswith(".npz")] + [n for n in names if n.endswith(".json")]
            if not found:
                held = f" (it holds {len(names)} other object{'s' if len(names) != 1 else ''})" if names else ""
                raise DataError(f"{role} folder {location} holds no .npz or .json objects{held}; expected one shard per .npz object")
            return [fs.unstrip_protocol(name) for name in found]
        if fs.isfile(path):
            return [fs.unstrip_protocol(path)]
        raise _missing(fs, path, location, role)


def read_bytes(url: str, what: str) -> bytes:
    """The whole object at ``url`` (one GET).

    Raises:
        DataError, EnvironmentFailure: see :func:`url_errors` (``what`` names it).
    """
    fs, path = _fs(url, what)
    with url_errors(what):
        return fs.cat_file(path)


def size(url: str) -> int:
    """Bytes of the object at ``url`` (a HEAD, no data read); 0 when the store does not say."""
    fs, path = _fs(url)
    with url_errors(url):
        return int(fs.size(path) or 0)


@contextmanager
def open_binary(url: str, what: str) -> Iterator[IO[bytes]]:
    """A seekable binary file over the object at ``url`` that reads in small ranges (headers of
    a large ``.npz`` without its arrays). Errors inside the block are the caller's to map."""
    fs, path = _fs(url)
    with url_errors(what):
        fh = fs.open(path, "rb", block_size=_PEEK_BLOCK, cache_type="readahead")
    with fh:
        yield fh


def sha256(url: str, what: str | None = None) -> str:
    """Hex sha256 of the object's bytes, streamed in 1 MiB reads (memory stays flat).

    The bytes themselves are hashed: an S3 ETag is not a content digest (multipart uploads get
    an MD5 of part MD5s, which depends on the part size), so it is never used as one.
    """
    fs, path = _fs(url)
    h = hashlib.sha256()
    with url_errors(what or f"shard {url}"):
        with fs.open(path, "rb", block_size=8 * _CHUNK) as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def sha256_many(urls: Sequence[str], threads: int = DIGEST_THREADS) -> list[str]:
    """:func:`sha256` of each URL, in order, ``threads`` objects at a time."""
    if len(urls) <= 1 or threads <= 1:
        return [sha256(u) for u in urls]
    with ThreadPoolExecutor(max_workers=min(threads, len(urls)), thread_name_prefix="fp16guard-sha256") as pool:
        return list(pool.map(sha256, urls))
