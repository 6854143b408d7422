"""Lock files that cannot outlive their holder: a lease with a holder record, renewed while alive.

Why: a lock written with no expiry (Prefect's ``FileSystemLockManager``) outlives a killed run, and
every later run of the same inputs waits on it for ever. Here a lock file holds the lease record of
:mod:`fp16guard.store.lease` (holder, pid, host, process start, ``expires_at``), a daemon thread
in the holding process renews it every ``lease_s / 4`` seconds, and a waiter breaks it when its
holder's process is gone (same host) or its lease expired (see
:func:`fp16guard.store.lease.stale_reason`). Waiting is bounded (``wait_s``), says what it waits
for every ``report_s`` seconds, and stops at once when the interpreter is shutting down.

Creation is atomic (a complete temporary file hard-linked to the lock name: it appears whole or
not at all); breaking and renewing happen under an ``fcntl.flock`` on ``<folder>/.guard`` so a
breaker never removes a lock another process has just taken. Lock folders are local to a host
(or a shared file system whose ``flock`` works across hosts, such as NFSv4); a store on S3 keeps
its locks in the store itself (:mod:`fp16guard.store.remote_locks`).

This module does not import Prefect: ``tasks.caching.LeaseLockManager`` adapts it to Prefect's
``LockManager`` protocol.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

# Re-exported: callers (the CLI's watchdog, the store's work folders, tests) import them from here.
from fp16guard.store.lease import (  # noqa: F401
    DEFAULT_LEASE_S,
    DEFAULT_WAIT_S,
    WAIT_ENV,
    LeaseLockBase,
    LockTimeout,
    _proc_start,
    cancel_waits,
    host_id,
    parse_record,
    process_alive,
)

__all__ = ["LeaseLocks", "LockTimeout", "cancel_waits", "holder_gone", "process_alive", "process_record", "DEFAULT_LEASE_S", "DEFAULT_WAIT_S", "WAIT_ENV"]


def process_record() -> dict:
    """``{"pid", "host", "proc_start"}`` of this process as lock records name their holder
    (``host``: :func:`fp16guard.store.lease.host_id`); :func:`holder_gone` judges it later."""
    import os

    return {"pid": os.getpid(), "host": host_id(), "proc_start": _proc_start(os.getpid())}


def holder_gone(record: dict) -> bool:
    """True when ``record`` (``pid``, ``host``, optional ``proc_start``, as :func:`process_record`
    gives them) names a process of *this* host that no longer exists, or whose pid now belongs
    to a later process. Another host's process is never judged gone: only its lease can tell."""
    pid, start = record.get("pid"), record.get("proc_start")
    if isinstance(pid, str) and pid.isdigit():
        pid = int(pid)
    if record.get("host") != host_id() or not isinstance(pid, int):
        return False
    return not process_alive(pid, str(start) if start not in (None, "") else None)



class LeaseLocks(LeaseLockBase):
    """A folder of lease lock files (see module docstring).

    Args:
        folder: where lock files live (created on first use).
        lease_s, wait_s, report_s, poll_s, report, host: see
            :class:`fp16guard.store.lease.LeaseLockBase`.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        lease_s: float = DEFAULT_LEASE_S,
        wait_s: float | None = None,
        report_s: float = 30.0,
        poll_s: float = 0.1,
        report: Callable[[str], None] | None = None,
        host: str | None = None,
    ):
        self.folder = Path(folder)
        super().__init__(lease_s=lease_s, wait_s=wait_s, report_s=report_s, poll_s=poll_s, report=report, host=host)

    # ------------------------------------------------------------------ paths and records
    def path(self, key: str) -> Path:
        """The lock file of ``key`` (any '/' in the key becomes '_')."""
        return self.folder / (key.replace("/", "_").replace("\\", "_") + ".lock")

    def location(self, key: str) -> str:
        return str(self.path(key))

    def _read(self, key: str) -> tuple[dict | None, Any]:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None, None
        return parse_record(data), None

    # ------------------------------------------------------------------ operations
    @contextmanager
    def _guard(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".guard", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _create(self, key: str, record: dict) -> tuple[bool, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            try:
                os.link(tmp, target)  # atomic; refuses an existing lock
            except FileExistsError:
                return False, None
            return True, None
        finally:
            os.unlink(tmp)

    def _take_stale(self, key: str, record: dict, token: Any, claim: dict, reason: str) -> tuple[bool, Any]:
        self.break_if_stale(key)
        return False, None  # the caller creates it again (or finds whoever was faster)

    def break_if_stale(self, key: str) -> str | None:
        """Remove ``key``'s lock when its holder is gone or its lease expired.

        Returns:
            The reason it was broken (also reported), or None when it was left alone.
        """
        with self._guard():
            record = self.read(key)
            if record is None:
                return None
            reason = self.stale_reason(record)
            if reason is None:
                return None
            self.path(key).unlink(missing_ok=True)
        self.report(f"fp16guard: removed the lock {self.path(key)}: {reason}")
        self._stale_broken(record, reason)
        return reason

    def sweep(self) -> list[tuple[str, str]]:
        """Break every stale lock in the folder (:meth:`break_if_stale` on each lock file).

        A killed run's lock is otherwise broken only when a later run needs the same key; a lock
        whose key no later run asks for again (a group of shards formed differently) would stay.

        Returns:
            ``(key, reason)`` per lock removed (key as its file names it).
        """
        removed = []
        try:
            names = sorted(p.name for p in self.folder.glob("*.lock"))
        except OSError:
            return removed
        for name in names:
            key = name[: -len(".lock")]
            reason = self.break_if_stale(key)
            if reason:
                removed.append((key, reason))
        return removed

    def release(self, key: str, holder: str) -> None:
        """Release ``key`` if ``holder`` holds it.

        Raises:
            ValueError: the lock is not held by ``holder`` (Prefect's contract).
        """
        with self._guard():
            record = self.read(key)
            if record is None or record.get("holder") != holder:
                self._forget(key)
                raise ValueError(f"no lock held by {holder} for {key}")
            self.path(key).unlink(missing_ok=True)
        self._forget(key)

    def is_locked(self, key: str) -> bool:
        """True when a live holder has ``key`` (a stale lock is removed and reads as free)."""
        record = self.read(key)
        if record is None:
            return False
        if self.stale_reason(record) is not None:
            self.break_if_stale(key)
            return self.read(key) is not None
        return True

    def _renew_one(self, key: str, holder: str, token: Any, record: dict) -> tuple[bool, Any, dict]:
        with self._guard():
            current = self.read(key)
            if not current or current.get("holder") != holder or current.get("pid") != os.getpid():
                return False, None, record
            current["expires_at"] = time.time() + self.lease_s
            target = self.path(key)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.folder)
            with os.fdopen(fd, "w") as fh:
                json.dump(current, fh)
            os.replace(tmp, target)
            return True, None, current
