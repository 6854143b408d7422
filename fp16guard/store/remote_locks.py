"""Lease locks kept in an S3 store itself, so they hold across every host that shares the store.

Same record, staleness rules, renewal and bounded wait as the local lock files
(:mod:`fp16guard.store.lease`; :class:`fp16guard.store.locks.LeaseLocks`); only where the record
lives differs: one object per key, ``<store>/<prefix>/<key>.lock``, changed only by conditional
requests on its ETag (:mod:`fp16guard.store.conditional`):

- **take** — PUT ``If-None-Match: *``: of two hosts creating the same lock, exactly one succeeds;
- **renew** — PUT ``If-Match: <the ETag we last wrote>``: it fails once anybody else changed the
  record, so a renewer whose lease was broken never resurrects its lock (it forgets it and says
  so); a PUT with ``If-Match`` on a deleted key fails too, so a released lock stays released;
- **break** — a waiter that finds a stale record (lease expired; or, same host id, holder process
  gone) does not delete it: it *overwrites* it with its own claim, ``If-Match: <the stale ETag>``.
  Of two breakers reading the same stale record, one wins and the other's PUT fails, so a breaker
  never removes a lock another host has just taken, and breaking needs no conditional DELETE;
- **release** — DELETE ``If-Match: <current ETag>`` after checking the record is ours (re-read
  and retried when our own renewal changed the ETag in between).

Every record written carries a fresh ``nonce``: S3's ETag is the MD5 of the body, and two equal
bodies would give an old ETag a new object to match. The nonce also recognises our own write when
a response was lost and the request retried (the retry then fails its condition, and a re-read
shows our nonce).

Limits: a holder that loses its lease (renewal late by more than ``lease_s``, e.g. paused or cut
off from S3) and is broken keeps computing while the new holder computes too; the result is the
same and the cache records are checked by digest, so the cost is duplicate work, not a wrong
result. Release relies on conditional DELETE; on an S3-compatible server that ignores ``If-Match``
on DELETE, a holder whose lease was broken would delete its successor's lock at release (again,
duplicate work at worst). Stores on other fsspec back ends (gs://, memory://) have no ETag
conditions here: their locks stay per host (``tasks.caching.lock_manager_for``).

The host id in records is ``$FP16GUARD_HOST_ID`` or the host name (:func:`fp16guard.store.lease.host_id`).
This module does not import Prefect.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable

from fp16guard.store.conditional import S3Objects
from fp16guard.store.fs import RemoteFS
from fp16guard.store.lease import DEFAULT_LEASE_S, LeaseLockBase, describe, parse_record

__all__ = ["RemoteLeaseLocks"]

#: How often :meth:`RemoteLeaseLocks.release` re-reads when our own renewal changed the ETag
#: between its read and its DELETE (once is normal; more means something else writes the key).
_RELEASE_TRIES = 5


class RemoteLeaseLocks(LeaseLockBase):
    """Lease locks as objects under ``prefix`` of an S3 store (see module docstring).

    Args:
        fs: the store's file-system layer (:class:`fp16guard.store.fs.RemoteFS` of an ``s3://``
            root).
        prefix: folder of the lock objects, relative to the store root (e.g. ``.cache/locks/stats``).
        lease_s, wait_s, report_s, poll_s, report, host: see
            :class:`fp16guard.store.lease.LeaseLockBase` (``lease_s`` in seconds, default 120).

    Raises:
        ValueError: ``fs`` is not an S3 store.

    Side effects: every operation is one or two HTTP requests to the store; the renewal thread
    sends one PUT per held lock every ``lease_s / 4`` seconds.
    """

    def __init__(
        self,
        fs: RemoteFS,
        prefix: str,
        lease_s: float = DEFAULT_LEASE_S,
        wait_s: float | None = None,
        report_s: float = 30.0,
        poll_s: float = 0.25,
        report: Callable[[str], None] | None = None,
        host: str | None = None,
    ):
        self.objects = S3Objects(fs)
        self.prefix = prefix.strip("/")
        self.url = self.objects.url_of(self.prefix)
        super().__init__(lease_s=lease_s, wait_s=wait_s, report_s=report_s, poll_s=poll_s, report=report, host=host)

    # ------------------------------------------------------------------ storage primitives
    def _rel(self, key: str) -> str:
        return f"{self.prefix}/{key.replace('/', '_').replace(chr(92), '_')}.lock"

    def location(self, key: str) -> str:
        return self.objects.url_of(self._rel(key))

    def _new_record(self, holder: str, what: str) -> dict:
        return {**super()._new_record(holder, what), "nonce": uuid.uuid4().hex}

    @staticmethod
    def _body(record: dict) -> bytes:
        return json.dumps(record, sort_keys=True).encode("utf-8")

    def _read(self, key: str) -> tuple[dict | None, Any]:
        got = self.objects.get(self._rel(key))
        if got is None:
            return None, None
        data, etag = got
        return parse_record(data), etag

    def _create(self, key: str, record: dict) -> tuple[bool, Any]:
        etag = self.objects.create(self._rel(key), self._body(record))
        return etag is not None, etag

    def _ours_after_all(self, key: str, nonce: str) -> tuple[bool, Any]:
        """After a failed condition: ``(True, etag)`` when the record is the one we just wrote
        (a retried request whose first attempt succeeded), else ``(False, None)``."""
        record, etag = self._read(key)
        if record is not None and record.get("nonce") == nonce:
            return True, etag
        return False, None

    def _take_stale(self, key: str, record: dict, token: Any, claim: dict, reason: str) -> tuple[bool, Any]:
        etag = self.objects.replace(self._rel(key), self._body(claim), token) if token else None
        if etag is None:
            taken, etag = self._ours_after_all(key, claim["nonce"])
            if not taken:
                return False, None  # another waiter broke it first, or its holder renewed: read again
        self.report(f"fp16guard: took over the lock {self.location(key)}: {reason}")
        return True, etag

    def _renew_one(self, key: str, holder: str, token: Any, record: dict) -> tuple[bool, Any, dict]:
        renewed = {**record, "expires_at": time.time() + self.lease_s, "nonce": uuid.uuid4().hex}
        etag = self.objects.replace(self._rel(key), self._body(renewed), token)
        if etag is not None:
            return True, etag, renewed
        ours, etag = self._ours_after_all(key, renewed["nonce"])
        if ours:
            return True, etag, renewed
        now, _ = self._read(key)
        with self._mutex:
            still_held = key in self._held and self._held[key][0] == holder
        if still_held:  # not a release racing this renewal: the lease was lost
            by = f"now held by {describe(now)}" if now else "the lock is gone"
            self.report(
                f"fp16guard: lost the lock {self.location(key)} ({record.get('what') or key}): its lease lapsed before it was renewed and {by}; "
                f"the work it protects may be done twice (the result is the same)"
            )
        return False, None, record

    def release(self, key: str, holder: str) -> None:
        """Release ``key`` if ``holder`` holds it (conditional DELETE on the record's ETag).

        Raises:
            ValueError: the lock is not held by ``holder`` (Prefect's contract), or it kept
                changing under us (:data:`_RELEASE_TRIES` reads).
        """
        self._forget(key)  # first, so a renewal racing this release is not taken for a lost lease
        for _ in range(_RELEASE_TRIES):
            record, etag = self._read(key)
            if record is None or record.get("holder") != holder:
                raise ValueError(f"no lock held by {holder} for {key}")
            if self.objects.delete(self._rel(key), etag):
                return
        raise ValueError(f"the lock {self.location(key)} kept changing while {holder} released it")
