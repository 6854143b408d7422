"""Lock files that cannot outlive their holder: a lease with a holder record, renewed while alive.

Why: a lock written with no expiry (Prefect's ``FileSystemLockManager``) outlives a killed run, and
every later run of the same inputs waits on it for ever. Here a lock file records who holds it
and until when::

    {"holder": "<caller's id>", "pid": 4242, "host": "node-1", "proc_start": "123456",
     "acquired_at": 1767225600.0, "expires_at": 1767225720.0, "what": "stats shard s0"}

and a daemon thread in the holding process pushes ``expires_at`` forward every
``lease_s / 4`` seconds while the process lives. A waiter breaks the lock when

- the holder ran on this host and its process is gone (``kill(pid, 0)`` fails, or the pid now
  belongs to a process that started later: ``proc_start`` differs), or
- the lease expired (the holder stopped renewing: killed on another host, or hung).

Waiting is bounded (``wait_s``); a waiter says what it waits for (holder pid, host, since when)
every ``report_s`` seconds, and stops at once when the interpreter is shutting down (Ctrl-C in
the main thread while a worker thread waits).

Creation is atomic (a complete temporary file hard-linked to the lock name: it appears whole or
not at all); breaking and renewing happen under an ``fcntl.flock`` on ``<folder>/.guard`` so a
breaker never removes a lock another process has just taken. Lock folders are local to a host
(or a shared file system whose ``flock`` works across hosts, such as NFSv4).

This module does not import Prefect: ``tasks.caching.LeaseLockManager`` adapts it to Prefect's
``LockManager`` protocol.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from fp16guard.errors import EnvironmentFailure

__all__ = ["LeaseLocks", "LockTimeout", "cancel_waits", "process_alive", "DEFAULT_LEASE_S", "DEFAULT_WAIT_S", "WAIT_ENV"]

#: Seconds a lock stays valid without renewal. The holder renews every quarter of it.
DEFAULT_LEASE_S = 120.0
#: Seconds a waiter waits for a live holder before giving up (environment failure, exit 3).
DEFAULT_WAIT_S = 3600.0
#: Environment variable overriding :data:`DEFAULT_WAIT_S` (seconds).
WAIT_ENV = "FP16GUARD_LOCK_WAIT_S"

_log = logging.getLogger("fp16guard.locks")


class LockTimeout(EnvironmentFailure):
    """A live holder kept a lock for longer than the waiter's bound (exit status 3)."""


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None
    where /proc is not available. Distinguishes a reused pid from the original holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, proc_start: str | None = None) -> bool:
    """True when process ``pid`` exists on this host (and, if ``proc_start`` is given and
    /proc is readable, is the same process that recorded it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if proc_start is not None:
        now = _proc_start(pid)
        if now is not None and now != proc_start:
            return False
    return True


_CANCELLED = threading.Event()


def cancel_waits() -> None:
    """Make every lock wait in this process stop now (and later ones fail at once) with
    :class:`LockTimeout`. Called on Ctrl-C by the CLI: the main thread's ``KeyboardInterrupt``
    does not reach the worker threads that wait, and Prefect's task runner joins them before
    the process can exit."""
    _CANCELLED.set()


def _interpreter_stopping() -> bool:
    """True once :func:`cancel_waits` was called, or the interpreter's shutdown has started
    (the main thread is gone or ``concurrent.futures`` is joining its workers). A worker thread
    that waits for a lock must then stop, or the exit waits on it."""
    import concurrent.futures.thread as cft

    return _CANCELLED.is_set() or sys.is_finalizing() or not threading.main_thread().is_alive() or bool(getattr(cft, "_shutdown", False))


class LeaseLocks:
    """A folder of lease lock files (see module docstring).

    Args:
        folder: where lock files live (created on first use).
        lease_s: seconds a lock stays valid without renewal (default :data:`DEFAULT_LEASE_S`).
        wait_s: seconds :meth:`acquire` waits for a live holder before raising
            :class:`LockTimeout`; default ``$FP16GUARD_LOCK_WAIT_S`` else :data:`DEFAULT_WAIT_S`.
        report_s: seconds between "waiting for ..." messages (default 30).
        poll_s: seconds between checks while waiting (default 0.1).
        report: called with each waiting/breaking message; default: log it on
            ``fp16guard.locks`` (WARNING).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        lease_s: float = DEFAULT_LEASE_S,
        wait_s: float | None = None,
        report_s: float = 30.0,
        poll_s: float = 0.1,
        report: Callable[[str], None] | None = None,
    ):
        self.folder = Path(folder)
        self.lease_s = float(lease_s)
        if wait_s is None:
            from fp16guard.settings import env_seconds

            wait_s = env_seconds(WAIT_ENV, DEFAULT_WAIT_S)
        self.wait_s = float(wait_s)
        self.report_s = float(report_s)
        self.poll_s = float(poll_s)
        self.report = report or (lambda message: _log.warning(message))
        self.host = socket.gethostname()
        self._held: dict[str, str] = {}  # key -> holder, locks this object holds
        self._mutex = threading.Lock()
        _Renewer.register(self)

    # ------------------------------------------------------------------ paths and records
    def path(self, key: str) -> Path:
        """The lock file of ``key`` (any '/' in the key becomes '_')."""
        return self.folder / (key.replace("/", "_").replace("\\", "_") + ".lock")

    def read(self, key: str) -> dict | None:
        """The lock record of ``key``, or None when unlocked. A file that is not a valid record
        (truncated by a crash of an older writer) is returned as ``{"damaged": True}``."""
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            return record
        except ValueError:
            return {"damaged": True, "raw": data[:200].decode("utf-8", "replace")}

    def _new_record(self, holder: str, what: str) -> dict:
        now = time.time()
        return {
            "holder": holder,
            "pid": os.getpid(),
            "host": self.host,
            "proc_start": _proc_start(os.getpid()),
            "acquired_at": now,
            "expires_at": now + self.lease_s,
            "what": what,
        }

    def stale_reason(self, record: dict) -> str | None:
        """Why ``record`` no longer protects anything (holder gone, lease expired, damaged), or
        None when its holder may still be working."""
        if record.get("damaged"):
            return "the lock file is damaged"
        pid, host = record.get("pid"), record.get("host")
        if host == self.host and isinstance(pid, int) and not process_alive(pid, record.get("proc_start")):
            return f"its holder (pid {pid} on {host}) is gone"
        expires = record.get("expires_at")
        if not isinstance(expires, (int, float)):
            return "the lock records no expiry (written by an older version)"
        if expires < time.time():
            return f"its lease expired {time.time() - expires:.0f} s ago (holder pid {pid} on {host} stopped renewing it)"
        return None

    @staticmethod
    def describe(record: dict) -> str:
        """``pid 4242 on node-1 since 12:00:00 UTC (stats shard s0)`` for messages."""
        since = time.strftime("%H:%M:%S UTC", time.gmtime(record.get("acquired_at") or 0))
        what = f" ({record['what']})" if record.get("what") else ""
        return f"pid {record.get('pid')} on {record.get('host')} since {since}{what}"

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

    def _try_create(self, key: str, record: dict) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            try:
                os.link(tmp, target)  # atomic; refuses an existing lock
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

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
        return reason

    def acquire(self, key: str, holder: str, timeout: float | None = None, what: str = "") -> bool:
        """Take ``key`` for ``holder``, waiting (bounded) for a live holder to finish.

        Args:
            key: lock name (a cache key).
            holder: the caller's id; acquiring a lock one already holds returns True.
            timeout: seconds to wait; None: :attr:`wait_s`. 0: do not wait.
            what: a few words saying what the lock protects (shown to waiters).

        Returns:
            True when acquired; False only when ``timeout`` was given explicitly and ran out.

        Raises:
            LockTimeout: ``timeout`` was None and a live holder kept the lock past :attr:`wait_s`,
                or the interpreter is shutting down (Ctrl-C) while waiting.
        """
        explicit = timeout is not None
        limit = self.wait_s if timeout is None else float(timeout)
        start = next_report = time.monotonic()
        while True:
            if self._try_create(key, self._new_record(holder, what)):
                with self._mutex:
                    self._held[key] = holder
                return True
            record = self.read(key)
            if record is None:
                continue  # released between our try and our read
            if record.get("holder") == holder and record.get("pid") == os.getpid() and record.get("host") == self.host:
                with self._mutex:
                    self._held[key] = holder
                return True
            if self.break_if_stale(key):
                continue
            waited = time.monotonic() - start
            if _interpreter_stopping():
                raise LockTimeout(f"interrupted while waiting for the lock {self.path(key)} held by {self.describe(record)}")
            if waited >= limit:
                if explicit:
                    return False
                raise LockTimeout(
                    f"waited {waited:.0f} s for the lock {self.path(key)} held by {self.describe(record)}, which is still running; "
                    f"expected it to finish sooner — wait for it, or raise ${WAIT_ENV} (now {self.wait_s:.0f} s)"
                )
            if time.monotonic() >= next_report:
                self.report(f"fp16guard: waiting for {self.describe(record)} to release {self.path(key).name} ({waited:.0f} s so far)")
                next_report = time.monotonic() + self.report_s
            time.sleep(self.poll_s)

    def release(self, key: str, holder: str) -> None:
        """Release ``key`` if ``holder`` holds it.

        Raises:
            ValueError: the lock is not held by ``holder`` (Prefect's contract).
        """
        with self._guard():
            record = self.read(key)
            if record is None or record.get("holder") != holder:
                with self._mutex:
                    self._held.pop(key, None)
                raise ValueError(f"no lock held by {holder} for {key}")
            self.path(key).unlink(missing_ok=True)
        with self._mutex:
            self._held.pop(key, None)

    def is_locked(self, key: str) -> bool:
        """True when a live holder has ``key`` (a stale lock is removed and reads as free)."""
        record = self.read(key)
        if record is None:
            return False
        if self.stale_reason(record) is not None:
            self.break_if_stale(key)
            return self.read(key) is not None
        return True

    def is_holder(self, key: str, holder: str) -> bool:
        """True when ``holder`` holds ``key``."""
        record = self.read(key)
        return bool(record) and record.get("holder") == holder and self.stale_reason(record) is None

    def wait(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is free (bounded by ``timeout``, default :attr:`wait_s`).

        Returns:
            True when free; False when the time ran out.
        """
        limit = self.wait_s if timeout is None else float(timeout)
        start = last_report = time.monotonic()
        while self.is_locked(key):
            waited = time.monotonic() - start
            if waited >= limit or _interpreter_stopping():
                return False
            if time.monotonic() - last_report >= self.report_s:
                record = self.read(key) or {}
                self.report(f"fp16guard: waiting for {self.describe(record)} to release {self.path(key).name} ({waited:.0f} s so far)")
                last_report = time.monotonic()
            time.sleep(self.poll_s)
        return True

    def renew(self) -> None:
        """Push the expiry of every lock this object holds ``lease_s`` into the future (called
        by the renewal thread; a lock someone else now holds is forgotten, not touched)."""
        with self._mutex:
            held = dict(self._held)
        for key, holder in held.items():
            try:
                with self._guard():
                    record = self.read(key)
                    if not record or record.get("holder") != holder or record.get("pid") != os.getpid():
                        with self._mutex:
                            self._held.pop(key, None)
                        continue
                    record["expires_at"] = time.time() + self.lease_s
                    target = self.path(key)
                    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=self.folder)
                    with os.fdopen(fd, "w") as fh:
                        json.dump(record, fh)
                    os.replace(tmp, target)
            except OSError as exc:  # a vanished folder: nothing to renew
                _log.debug("lock renewal of %s failed: %s", key, exc)


class _Renewer:
    """One daemon thread per process renewing the leases of every live :class:`LeaseLocks`.
    It dies with the process, which is the point: a killed holder stops renewing."""

    _managers: "weakref.WeakSet[LeaseLocks]" = weakref.WeakSet()
    _thread: threading.Thread | None = None
    _pid: int | None = None
    _lock = threading.Lock()

    @classmethod
    def register(cls, manager: LeaseLocks) -> None:
        with cls._lock:
            cls._managers.add(manager)
            if cls._thread is None or not cls._thread.is_alive() or cls._pid != os.getpid():
                cls._pid = os.getpid()
                cls._thread = threading.Thread(target=cls._run, name="fp16guard-lock-renewal", daemon=True)
                cls._thread.start()

    @classmethod
    def _run(cls) -> None:
        while True:
            managers = list(cls._managers)
            period = min((m.lease_s / 4 for m in managers), default=30.0)
            time.sleep(max(0.05, period))
            for manager in list(cls._managers):
                manager.renew()
