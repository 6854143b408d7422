"""Conditional requests on S3 objects, by ETag: create only if absent, replace or delete only if
unchanged since read.

The four operations the remote lease locks (:mod:`fp16guard.store.remote_locks`) are built on,
each one HTTP request whose condition the server checks:

- :meth:`S3Objects.get` → ``(bytes, etag)`` or None;
- :meth:`S3Objects.create` — PUT with ``If-None-Match: *`` → the new ETag, or None when the
  object exists;
- :meth:`S3Objects.replace` — PUT with ``If-Match: <etag>`` → the new ETag, or None when the
  object changed or is gone (a PUT with ``If-Match`` never creates);
- :meth:`S3Objects.delete` — DELETE with ``If-Match: <etag>`` → False when it changed or is gone.

AWS S3 checks all four (conditional writes since 2024-11, conditional deletes in general purpose
buckets since 2025-09); moto 5.2.6 does too (tried against its server: 412 ``PreconditionFailed``
naming the condition, 404 ``NoSuchKey`` for ``If-Match`` on a missing key). An ETag here is the
MD5 of the body, so callers must never write the same bytes twice to one key (the lock records
carry a nonce) or an old ETag would match a new object.

A failed condition (412 ``PreconditionFailed``, 409 ``ConditionalRequestConflict`` for a
concurrent conditional write, 404 for a key gone) is an answer, not an error; anything else of the
network or the server is :class:`fp16guard.store.fs.StoreIOError` (exit status 3), one line
naming the object. Requests go through the store's own s3fs client (endpoint, credentials,
retries as the store uses them).
"""

from __future__ import annotations

from typing import Any

from fp16guard.store.fs import RemoteFS, StoreIOError, describe_os_error

__all__ = ["S3Objects", "supports_conditional"]

#: Error codes that mean "the condition did not hold": the object changed or exists, another
#: conditional write to it was in flight, or the key is gone (never a missing bucket: that is an
#: error of the environment).
_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}


def supports_conditional(fs: Any) -> bool:
    """True when ``fs`` (a store file-system layer) is an S3 store, where :class:`S3Objects` works."""
    return isinstance(fs, RemoteFS) and fs.exclusive_is_atomic


def _condition_failed(exc: BaseException) -> bool:
    """True when ``exc`` (as s3fs raised it) says a condition did not hold or the key is gone."""
    cause = exc.__cause__
    response = getattr(cause, "response", None) or getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # Some servers answer 412/409 without a code; 404 counts only for a missing key.
        return code in _CONDITION_CODES or (not code and status in (409, 412))
    return isinstance(exc, (FileNotFoundError, FileExistsError))


class S3Objects:
    """Conditional requests on the objects of one S3 store (see module docstring).

    Args:
        fs: the store's :class:`fp16guard.store.fs.RemoteFS` (an ``s3://`` root).

    Raises:
        ValueError: ``fs`` is not an S3 store.
    """

    def __init__(self, fs: RemoteFS):
        if not supports_conditional(fs):
            raise ValueError(f"conditional requests need an s3:// store, not {getattr(fs, 'url', fs)!r}")
        self.s3 = fs.fs
        self.root = fs.root
        self.url = fs.url

    def url_of(self, rel: str) -> str:
        """``s3://bucket/prefix/<rel>`` for messages."""
        return f"{self.url}/{rel}"

    def _where(self, rel: str) -> tuple[str, str]:
        bucket, _, key = f"{self.root}/{rel}".partition("/")
        return bucket, key

    def _run(self, action: str, rel: str, coro_fn, *args) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` when the condition failed; other errors
        become one-line :class:`StoreIOError`."""
        from fsspec.asyn import sync

        try:
            return True, sync(self.s3.loop, coro_fn, *args)
        except Exception as exc:  # noqa: BLE001 — classified below; everything else is re-raised
            if _condition_failed(exc):
                return False, None
            if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs"):
                raise StoreIOError(f"cannot {action} {self.url_of(rel)}: {describe_os_error(exc)}") from None
            raise

    async def _get(self, bucket: str, key: str) -> tuple[bytes, str]:
        response = await self.s3._call_s3("get_object", Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return data, response["ETag"]

    async def _put(self, bucket: str, key: str, data: bytes, condition: dict) -> str:
        response = await self.s3._call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        return response["ETag"]

    async def _delete(self, bucket: str, key: str, etag: str) -> None:
        await self.s3._call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when there is none."""
        ok, result = self._run("read", rel, self._get, *self._where(rel))
        return result if ok else None

    def create(self, rel: str, data: bytes) -> str | None:
        """PUT ``data`` only if no object exists (``If-None-Match: *``): its ETag, or None."""
        ok, etag = self._run("create", rel, self._put, *self._where(rel), data, {"IfNoneMatch": "*"})
        return etag if ok else None

    def replace(self, rel: str, data: bytes, etag: str) -> str | None:
        """PUT ``data`` only if the object's ETag is still ``etag`` (``If-Match``): the new ETag,
        or None when it changed or is gone."""
        ok, new = self._run("replace", rel, self._put, *self._where(rel), data, {"IfMatch": etag})
        return new if ok else None

    def delete(self, rel: str, etag: str) -> bool:
        """DELETE the object only if its ETag is still ``etag`` (``If-Match``): False when it
        changed or is gone."""
        ok, _ = self._run("delete", rel, self._delete, *self._where(rel), etag)
        return ok
