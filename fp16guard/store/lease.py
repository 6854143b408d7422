"""What every lease lock shares, wherever its record lives: the holder record, the staleness
rules, the bounded wait, and the thread that renews leases while the holder lives.

A lock is one record per key::

    {"holder": "<caller's id>", "pid": 4242, "host": "node-1", "proc_start": "123456",
     "acquired_at": 1767225600.0, "expires_at": 1767225720.0, "what": "stats shard s0"}

Its holder's process pushes ``expires_at`` forward every ``lease_s / 4`` seconds (one daemon
thread per process, :class:`_Renewer`, which dies with the process: a killed holder stops
renewing). A waiter takes the lock over when (:func:`stale_reason`)

- the holder ran on this host (same host id) and its process is gone (``kill(pid, 0)`` fails,
  or the pid now belongs to a later process: ``proc_start`` differs), or
- the lease expired (the holder stopped renewing: killed on another host, or hung), or
- the record is damaged or has no expiry (an older writer).

The host id is ``$FP16GUARD_HOST_ID`` when set (tests simulate several hosts on one machine with
it; two real hosts must never share one), else the host name.

Where the records live is the subclass's business: :class:`fp16guard.store.locks.LeaseLocks`
(files in a local folder) and :class:`fp16guard.store.remote_locks.RemoteLeaseLocks` (objects in
an S3 store, changed only by conditional requests). :class:`LeaseLockBase` holds the acquire
and wait loops over five primitives they provide.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from fp16guard.errors import EnvironmentFailure

__all__ = [
    "LeaseLockBase", "LockTimeout", "cancel_waits", "process_alive", "host_id", "new_record", "parse_record",
    "stale_reason", "describe", "DEFAULT_LEASE_S", "DEFAULT_WAIT_S", "WAIT_ENV", "HOST_ENV",
]

#: Seconds a lock stays valid without renewal. The holder renews every quarter of it.
DEFAULT_LEASE_S = 120.0
#: Seconds a waiter waits for a live holder before giving up (environment failure, exit 3).
DEFAULT_WAIT_S = 3600.0
#: Environment variable overriding :data:`DEFAULT_WAIT_S` (seconds).
WAIT_ENV = "FP16GUARD_LOCK_WAIT_S"
#: Environment variable naming this host in lock records (default: the host name).
HOST_ENV = "FP16GUARD_HOST_ID"

_log = logging.getLogger("fp16guard.locks")


class LockTimeout(EnvironmentFailure):
    """A live holder kept a lock for longer than the waiter's bound (exit status 3)."""


def host_id() -> str:
    """This host's id in lock records: ``$FP16GUARD_HOST_ID`` if set, else the host name. Read
    when called, so a test can give each process its own."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


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


# ------------------------------------------------------------------ the record
def new_record(holder: str, what: str, lease_s: float, host: str) -> dict:
    """A fresh holder record for this process, valid ``lease_s`` seconds from now."""
    now = time.time()
    return {
        "holder": holder,
        "pid": os.getpid(),
        "host": host,
        "proc_start": _proc_start(os.getpid()),
        "acquired_at": now,
        "expires_at": now + lease_s,
        "what": what,
    }


def parse_record(data: bytes) -> dict:
    """The record in ``data``; bytes that are not a JSON object (truncated by a crash of an older
    writer) give ``{"damaged": True, "raw": ...}``."""
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("not an object")
        return record
    except ValueError:
        return {"damaged": True, "raw": data[:200].decode("utf-8", "replace")}


def stale_reason(record: dict, host: str) -> str | None:
    """Why ``record`` no longer protects anything (holder gone, lease expired, damaged), seen
    from host ``host``, or None when its holder may still be working."""
    if record.get("damaged"):
        return "the lock record is damaged"
    pid, holder_host = record.get("pid"), record.get("host")
    if holder_host == host and isinstance(pid, int) and not process_alive(pid, record.get("proc_start")):
        return f"its holder (pid {pid} on {holder_host}) is gone"
    expires = record.get("expires_at")
    if not isinstance(expires, (int, float)):
        return "the lock records no expiry (written by an older version)"
    if expires < time.time():
        return f"its lease expired {time.time() - expires:.0f} s ago (holder pid {pid} on {holder_host} stopped renewing it)"
    return None


def describe(record: dict) -> str:
    """``pid 4242 on node-1 since 12:00:00 UTC (stats shard s0)`` for messages."""
    since = time.strftime("%H:%M:%S UTC", time.gmtime(record.get("acquired_at") or 0))
    what = f" ({record['what']})" if record.get("what") else ""
    return f"pid {record.get('pid')} on {record.get('host')} since {since}{what}"


# ------------------------------------------------------------------ the loops
class LeaseLockBase:
    """Acquire, wait and renew over a subclass's record storage (see module docstring).

    A subclass provides :meth:`location`, :meth:`_read`, :meth:`_create`, :meth:`_take_stale`,
    :meth:`_renew_one` and :meth:`release`. A *token* is whatever the storage needs to change a
    record only if nobody else changed it since (an S3 ETag; None for local files, which use a
    ``flock`` guard instead).

    Args:
        lease_s: seconds a lock stays valid without renewal (default :data:`DEFAULT_LEASE_S`).
        wait_s: seconds :meth:`acquire` waits for a live holder before raising
            :class:`LockTimeout`; default ``$FP16GUARD_LOCK_WAIT_S`` else :data:`DEFAULT_WAIT_S`.
        report_s: seconds between "waiting for ..." messages (default 30).
        poll_s: seconds between checks while waiting (default 0.1).
        report: called with each waiting/breaking message; default: log it on
            ``fp16guard.locks`` (WARNING).
        host: this host's id in records (default :func:`host_id`).

    Side effect: registers the object with the process's renewal thread (started on first use).
    """

    def __init__(
        self,
        lease_s: float = DEFAULT_LEASE_S,
        wait_s: float | None = None,
        report_s: float = 30.0,
        poll_s: float = 0.1,
        report: Callable[[str], None] | None = None,
        host: str | None = None,
    ):
        self.lease_s = float(lease_s)
        if wait_s is None:
            from fp16guard.settings import env_seconds

            wait_s = env_seconds(WAIT_ENV, DEFAULT_WAIT_S)
        self.wait_s = float(wait_s)
        self.report_s = float(report_s)
        self.poll_s = float(poll_s)
        self.report = report or (lambda message: _log.warning(message))
        self.host = host or host_id()
        # key -> [holder, token, record] of the locks this object holds
        self._held: dict[str, list[Any]] = {}
        self._mutex = threading.Lock()
        _Renewer.register(self)

    # ------------------------------------------------------------------ storage primitives
    def location(self, key: str) -> str:
        """Where ``key``'s record lives (for messages)."""
        raise NotImplementedError

    def _read(self, key: str) -> tuple[dict | None, Any]:
        """``(record, token)``; ``(None, None)`` when unlocked."""
        raise NotImplementedError

    def _create(self, key: str, record: dict) -> tuple[bool, Any]:
        """Create ``key``'s record only if there is none: ``(created, token)``."""
        raise NotImplementedError

    def _take_stale(self, key: str, record: dict, token: Any, claim: dict, reason: str) -> tuple[bool, Any]:
        """Deal with a stale ``record`` read with ``token``: ``(True, new token)`` when ``claim``
        now holds the key, ``(False, None)`` when the caller should try to create it again."""
        raise NotImplementedError

    def _renew_one(self, key: str, holder: str, token: Any, record: dict) -> tuple[bool, Any, dict]:
        """Push ``key``'s expiry forward if ``holder`` still holds it: ``(still held, token, record)``."""
        raise NotImplementedError

    def release(self, key: str, holder: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ shared logic
    #: Set by the orchestration layer (``tasks.caching``): ``identity()`` returns extra fields
    #: for each new record (the flow run taking the lock); ``on_stale(record, reason)`` is told of
    #: each stale record this object broke or took over (to mark a dead holder's run crashed).
    #: Errors in either are logged, never raised.
    identity: Callable[[], dict] | None = None
    on_stale: Callable[[dict, str], None] | None = None

    def _new_record(self, holder: str, what: str) -> dict:
        record = new_record(holder, what, self.lease_s, self.host)
        if self.identity is not None:
            try:
                record = {**dict(self.identity() or {}), **record}
            except Exception as exc:  # noqa: BLE001 — a lock without the extra fields still protects
                _log.debug("lock identity failed: %s", exc)
        return record

    def _stale_broken(self, record: dict, reason: str) -> None:
        """Tell :attr:`on_stale` that ``record`` was broken or taken over."""
        if self.on_stale is not None:
            try:
                self.on_stale(record, reason)
            except Exception as exc:  # noqa: BLE001 — the lock is free either way
                _log.debug("on_stale failed: %s", exc)

    def read(self, key: str) -> dict | None:
        """The lock record of ``key``, or None when unlocked (``{"damaged": True}`` when unreadable)."""
        return self._read(key)[0]

    def stale_reason(self, record: dict) -> str | None:
        """See :func:`stale_reason` (seen from this object's host)."""
        return stale_reason(record, self.host)

    describe = staticmethod(describe)

    def _own(self, record: dict, holder: str) -> bool:
        return record.get("holder") == holder and record.get("pid") == os.getpid() and record.get("host") == self.host

    def _hold(self, key: str, holder: str, token: Any, record: dict) -> None:
        with self._mutex:
            self._held[key] = [holder, token, record]

    def _forget(self, key: str) -> None:
        with self._mutex:
            self._held.pop(key, None)

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
            claim = self._new_record(holder, what)
            created, token = self._create(key, claim)
            if created:
                self._hold(key, holder, token, claim)
                return True
            record, token = self._read(key)
            if record is None:
                continue  # released between our try and our read
            if self._own(record, holder):
                self._hold(key, holder, token, record)
                return True
            reason = self.stale_reason(record)
            if reason is not None:
                taken, new_token = self._take_stale(key, record, token, claim, reason)
                if taken:
                    self._hold(key, holder, new_token, claim)
                    self._stale_broken(record, reason)
                    return True
                continue
            waited = time.monotonic() - start
            if _interpreter_stopping():
                raise LockTimeout(f"interrupted while waiting for the lock {self.location(key)} held by {self.describe(record)}")
            if waited >= limit:
                if explicit:
                    return False
                raise LockTimeout(
                    f"waited {waited:.0f} s for the lock {self.location(key)} held by {self.describe(record)}, which is still running; "
                    f"expected it to finish sooner — wait for it, or raise ${WAIT_ENV} (now {self.wait_s:.0f} s)"
                )
            if time.monotonic() >= next_report:
                self.report(f"fp16guard: waiting for {self.describe(record)} to release {self.location(key)} ({waited:.0f} s so far)")
                next_report = time.monotonic() + self.report_s
            time.sleep(self.poll_s)

    def is_locked(self, key: str) -> bool:
        """True when a live holder has ``key`` (a stale record reads as free)."""
        record = self.read(key)
        return record is not None and self.stale_reason(record) is None

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
                self.report(f"fp16guard: waiting for {self.describe(record)} to release {self.location(key)} ({waited:.0f} s so far)")
                last_report = time.monotonic()
            time.sleep(self.poll_s)
        return True

    def renew(self) -> None:
        """Push the expiry of every lock this object holds ``lease_s`` into the future (called
        by the renewal thread; a lock someone else now holds is forgotten, not touched)."""
        with self._mutex:
            held = {key: list(value) for key, value in self._held.items()}
        for key, (holder, token, record) in held.items():
            if record.get("pid") != os.getpid():
                # A forked child inherited this object: the lease is its parent's to keep alive
                # (renewing it here would keep a dead parent's lock alive).
                with self._mutex:
                    self._held.pop(key, None)
                continue
            try:
                still, new_token, new_record_ = self._renew_one(key, holder, token, record)
            except (OSError, EnvironmentFailure) as exc:  # a vanished folder, a network error: try again next period
                _log.debug("lock renewal of %s failed: %s", key, exc)
                continue
            with self._mutex:
                current = self._held.get(key)
                if current is None or current[0] != holder:
                    continue  # released (or retaken) while we renewed
                if still:
                    self._held[key] = [holder, new_token, new_record_]
                else:
                    self._held.pop(key, None)


class _Renewer:
    """One daemon thread per process renewing the leases of every live lock object.
    It dies with the process, which is the point: a killed holder stops renewing."""

    _managers: "weakref.WeakSet[LeaseLockBase]" = weakref.WeakSet()
    _thread: threading.Thread | None = None
    _pid: int | None = None
    _lock = threading.Lock()

    @classmethod
    def register(cls, manager: LeaseLockBase) -> None:
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
