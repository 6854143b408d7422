"""A one-line progress bar over shards, drawn on stderr only when stderr is a terminal.

No dependency: a carriage-return line rewritten after each step. In logs and pipes (not a
terminal) it prints nothing, so captured output stays clean.

Work that runs in other threads of this process (a task measuring a group of shards) reports each
finished step through a *channel* (:meth:`Progress.channel`, :func:`report`), a plain string that
can travel as a task argument; work in another process (a Dask worker) finds no listener there,
and its caller counts the steps when the work returns (:meth:`Progress.advance_many`).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

__all__ = ["Progress", "report"]

_listeners: dict[str, "Progress"] = {}
_listeners_lock = threading.Lock()


def report(channel: str | None, note: str = "") -> bool:
    """Count one finished step on the :class:`Progress` listening on ``channel`` in this process.

    Returns:
        True when a listener counted it; False when none listens here (no channel, or the caller
        runs in another process), so the step is still to be counted by whoever collects it.
    """
    if not channel:
        return False
    with _listeners_lock:
        bar = _listeners.get(channel)
    if bar is None:
        return False
    bar.advance(note)
    return True


class Progress:
    """Progress over ``total`` steps.

    Args:
        total: number of steps (shards).
        label: word shown before the bar, e.g. "shards".
        stream: where to draw; default ``sys.stderr``. Nothing is drawn unless it is a terminal
            (or ``force`` is True).
        force: draw even when ``stream`` is not a terminal (tests).
        width: bar width in characters.

    Example:
        >>> with Progress(len(shards), "shards") as bar:
        ...     for ref in shards:
        ...         work(ref); bar.advance(ref.name)
    """

    def __init__(
        self,
        total: int,
        label: str = "shards",
        stream: TextIO | None = None,
        force: bool = False,
        width: int = 30,
        on_advance: Callable[[int, int], None] | None = None,
    ):
        self.total = max(0, int(total))
        self.on_advance = on_advance
        self._lock = threading.Lock()
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.done = 0
        self._start = time.monotonic()

    def __enter__(self) -> "Progress":
        self._draw("")
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def advance(self, note: str = "") -> None:
        """Count one finished step and redraw; ``note`` (e.g. the shard name) is shown after it.
        Safe to call from several threads."""
        self.advance_many(1, note)

    def advance_many(self, steps: int, note: str = "") -> None:
        """Count ``steps`` finished steps at once (work reported when it returned)."""
        if steps <= 0:
            return
        with self._lock:
            self.done = min(self.total, self.done + steps)
            self._draw(note)
            done = self.done
        if self.on_advance is not None:
            try:
                self.on_advance(done, self.total)
            except Exception:  # noqa: BLE001 — a display hook never stops the work
                pass

    @contextmanager
    def channel(self) -> Iterator[str]:
        """A channel name on which :func:`report` advances this bar from any thread of this
        process, while the ``with`` block lasts."""
        name = uuid.uuid4().hex
        with _listeners_lock:
            _listeners[name] = self
        try:
            yield name
        finally:
            with _listeners_lock:
                _listeners.pop(name, None)

    def _draw(self, note: str) -> None:
        if not self.enabled:
            return
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        elapsed = time.monotonic() - self._start
        note = note if len(note) <= 40 else "…" + note[-39:]
        # ETA from the mean time per finished step so far (none before the first step).
        eta = f" ETA {elapsed / self.done * (self.total - self.done):4.0f}s" if 0 < self.done < self.total else ""
        line = f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {elapsed:5.1f}s{eta} {note}"
        self.stream.write(line.ljust(100)[:120])
        self.stream.flush()
