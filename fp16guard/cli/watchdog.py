"""A watchdog on the Prefect server during a CLI run: a lost server ends the run in bounded time.

Why: when the server dies mid-run, Prefect's client retries every call with backoff, and the run
hangs for about ten minutes before failing with a hundred lines of errors (issue 13). Here a
daemon thread asks ``<api>/health`` every :data:`CHECK_S` seconds; when no check has succeeded
for ``lost_s`` seconds (default :data:`DEFAULT_LOST_S`, ``$FP16GUARD_SERVER_LOST_S``), it

1. interrupts the main thread (``KeyboardInterrupt`` there), so the flow's own clean-up runs —
   the staging folder is removed, nothing is published;
2. gives that clean-up :data:`GRACE_S` seconds; if Prefect is still retrying calls to the dead
   server by then, prints the one-line error and ends the process with exit status 3
   (``os._exit``: the retries would otherwise go on). Cache locks the process held are lease
   locks (``fp16guard.store.locks``): the next run breaks them because their holder is gone.

:meth:`ServerWatchdog.check` turns the interrupt into :class:`EnvironmentFailure` (exit 3) when
the run ends within the grace period.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from fp16guard.errors import EnvironmentFailure

__all__ = ["ServerWatchdog", "ServerLost", "interruptible", "chain_sigterm", "DEFAULT_LOST_S", "LOST_ENV", "CHECK_S", "GRACE_S"]

#: Seconds without a successful health check after which the server counts as lost.
DEFAULT_LOST_S = 30.0
#: Environment variable overriding :data:`DEFAULT_LOST_S` (seconds).
LOST_ENV = "FP16GUARD_SERVER_LOST_S"
#: Seconds between health checks (each waits at most this long for an answer).
CHECK_S = 2.0
#: Seconds the run's clean-up gets after the interrupt before the process ends itself.
GRACE_S = 15.0


@contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, Ctrl-C (SIGINT, and the watchdog's interrupt) also stops the worker
    threads that wait for cache locks (:func:`fp16guard.store.locks.cancel_waits`), then raises
    ``KeyboardInterrupt`` in the main thread as usual. Without it a run waiting on a lock ignores
    Ctrl-C: the task runner joins the waiting worker before the process can exit.

    SIGTERM does the same and raises ``SystemExit(143)`` (128 + 15, the shell's convention), so
    the flow's clean-up (staging folder) runs before the process ends."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from fp16guard.store.locks import cancel_waits

    def handler(signum, frame):
        cancel_waits()
        signal.default_int_handler(signum, frame)

    def on_term(signum, frame):
        cancel_waits()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGINT, handler)
    previous_term = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def chain_sigterm() -> None:
    """Make the SIGTERM handler installed now also stop lock waits first.

    Prefect's flow engine replaces the SIGTERM handler while a flow runs (it raises
    ``TerminationSignal`` in the main thread, then re-delivers the signal to the previous handler
    once the engine's teardown is over); that teardown joins the worker threads, so a worker
    waiting for a lock would hold the process. Called from the flow's ``on_running`` hook, in the
    main thread, this wraps Prefect's handler. Elsewhere it does nothing.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    from fp16guard.store.locks import cancel_waits

    current = signal.getsignal(signal.SIGTERM)
    if not callable(current) or getattr(current, "_fp16guard_chained", False):
        return

    def handler(signum, frame):
        cancel_waits()
        current(signum, frame)

    handler._fp16guard_chained = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, handler)


class ServerLost(EnvironmentFailure):
    """The Prefect server stopped answering during the run (exit status 3)."""


def lost_after() -> float:
    """``$FP16GUARD_SERVER_LOST_S`` or :data:`DEFAULT_LOST_S`.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    from fp16guard.settings import env_seconds

    return env_seconds(LOST_ENV, DEFAULT_LOST_S)


class ServerWatchdog:
    """Context manager watching ``api_url`` while the block runs (see module docstring).

    Args:
        api_url: the Prefect API (``http://host:port/api``).
        lost_s: seconds without an answer that count as a lost server (default :func:`lost_after`).
        check_s: seconds between checks. grace_s: seconds of clean-up before the process exits.
        hard_exit: end the process after the grace period (default True; tests pass False).
        on_exit: called (errors ignored) just before that hard exit, which skips every
            ``finally`` of the run: e.g. remove the run's staging folder.
        cause: returns the first error Prefect logged meanwhile (or None); it is added to the
            one-line message (:class:`fp16guard.cli.prefect_log.PrefectErrorFold`).
    """

    def __init__(self, api_url: str, lost_s: float | None = None, check_s: float = CHECK_S, grace_s: float = GRACE_S, hard_exit: bool = True, on_exit=None, cause=None):
        self.api_url = api_url.rstrip("/")
        self.lost_s = lost_after() if lost_s is None else float(lost_s)
        self.check_s = float(check_s)
        self.grace_s = float(grace_s)
        self.hard_exit = hard_exit
        self.on_exit = on_exit
        self.cause = cause
        self.lost: str | None = None  # the one-line message, once lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fp16guard-server-watchdog", daemon=True)

    def __enter__(self) -> "ServerWatchdog":
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()

    def message(self) -> str:
        return (
            f"the Prefect server at {self.api_url} stopped answering during the run (no answer for {self.lost_s:.0f} s); "
            "the run was stopped and nothing was published — restart the server and run the same command again "
            "(finished shards are reused from the cache)"
        )

    def describe(self) -> str:
        """The one-line message once lost, with the first error Prefect logged (see ``cause``)."""
        first = None
        if self.cause is not None:
            try:
                first = self.cause()
            except Exception:  # noqa: BLE001 — the message must be printed whatever happens
                first = None
        return f"{self.lost} (Prefect's first error: {first})" if first else str(self.lost)

    def check(self, exc: BaseException | None = None) -> None:
        """Raise :class:`ServerLost` (from ``exc``) if the server was lost; else return."""
        if self.lost:
            raise ServerLost(self.describe()) from exc

    def _healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.api_url}/health", timeout=self.check_s).is_success
        except httpx.HTTPError:
            return False

    def _watch(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self.check_s):
            if self._healthy():
                last_ok = time.monotonic()
                continue
            if time.monotonic() - last_ok < self.lost_s:
                continue
            self.lost = self.message()
            _thread.interrupt_main()
            if not self.hard_exit or self._stop.wait(self.grace_s):
                return
            # Prefect is still retrying calls to the dead server: end the process ourselves.
            if self.on_exit is not None:
                try:
                    self.on_exit()
                except Exception:  # noqa: BLE001 — the exit below must happen
                    pass
            print(f"fp16guard: error: {self.describe()}", file=sys.stderr, flush=True)
            os._exit(ServerLost.exit_code)
