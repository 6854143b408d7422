"""A one-line progress bar over shards, drawn on stderr only when stderr is a terminal.

No dependency: a carriage-return line rewritten after each step. In logs and pipes (not a
terminal) it prints nothing, so captured output stays clean.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


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

    def __init__(self, total: int, label: str = "shards", stream: TextIO | None = None, force: bool = False, width: int = 30):
        self.total = max(0, int(total))
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
        """Count one finished step and redraw; ``note`` (e.g. the shard name) is shown after it."""
        self.done = min(self.total, self.done + 1)
        self._draw(note)

    def _draw(self, note: str) -> None:
        if not self.enabled:
            return
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        elapsed = time.monotonic() - self._start
        note = note if len(note) <= 40 else "…" + note[-39:]
        line = f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {elapsed:5.1f}s {note}"
        self.stream.write(line.ljust(100)[:120])
        self.stream.flush()
