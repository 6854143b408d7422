"""Prefect's own error lines, folded into fp16guard's one line while a CLI run is on a terminal.

Why: when the server is lost mid-run, Prefect's background services (``EventsWorker``, the log
and result workers) each print an ERROR line of several kilobytes to stderr before fp16guard's
one line (issue 20). They go through the ``debug`` handler of ``prefect._internal``, which the
console level settings (:func:`fp16guard.cli.commands.run.quiet_prefect_console`) do not reach.

:class:`PrefectErrorFold` puts a filter on every stream handler (stderr/stdout) while the run
goes on: records of ``prefect.*`` loggers at WARNING or above are kept back, and the first one's
cause (its exception, else its first line, shortened) is offered for fp16guard's message. The
Prefect API handler is left alone, so the UI still shows every log. Prefect's log-shipping
worker writes ``--- Error logging to API ---`` and the error straight to ``sys.stderr`` when
``logging.raiseExceptions`` is set (the stdlib's default), so the fold clears that flag while it
is active (a handler's own failure is then silent, as in a production logging setup). With
``--verbose`` nothing is changed.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["PrefectErrorFold", "MAX_CAUSE_CHARS"]

#: A folded cause is cut to this many characters (Prefect's messages embed whole event payloads).
MAX_CAUSE_CHARS = 160


class _Filter(logging.Filter):
    def __init__(self, fold: "PrefectErrorFold"):
        super().__init__()
        self.fold = fold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and (record.name == "prefect" or record.name.startswith("prefect.")):
            self.fold._keep(record)
            return False
        return True


def _short_message(record: logging.LogRecord) -> str:
    """The record's message with each long argument (an event payload) named by its type:
    ``Service 'EventsWorker' failed to process item <Event>``."""
    args = record.args
    if isinstance(args, tuple) and args:
        args = tuple(a if len(repr(a)) <= 60 else _Named(type(a).__name__) for a in args)
    try:
        return str(record.msg) % args if args else str(record.msg)
    except Exception:  # noqa: BLE001 — a format string that does not fit its arguments
        return str(record.msg)


class _Named:
    """Stands for a long argument in :func:`_short_message`: ``%r`` and ``%s`` give ``<Type>``."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"

    __str__ = __repr__


class PrefectErrorFold:
    """Context manager keeping Prefect's warnings and errors off the terminal (see module docstring).

    Args:
        enabled: False (``--verbose``) makes it do nothing.

    Attributes:
        records: how many records were kept back.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.records = 0
        self._first: logging.LogRecord | None = None
        self._last: logging.LogRecord | None = None
        self._mutex = threading.Lock()
        self._filter = _Filter(self)
        self._handlers: list[logging.Handler] = []
        self._raise_exceptions: bool | None = None

    def _keep(self, record: logging.LogRecord) -> None:
        with self._mutex:
            if record is self._last:  # the same record, met at its next handler
                return
            self._last = record
            self.records += 1
            if self._first is None and record.levelno >= logging.ERROR:
                self._first = record

    def first_cause(self) -> str | None:
        """The first kept ERROR's cause in one short line: ``ConnectError: All connection
        attempts failed (EventsWorker)``-like, or None when none was kept."""
        record = self._first
        if record is None:
            return None
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            text = f"{type(exc).__name__}: {str(exc).strip() or type(exc).__name__}"
        else:
            text = _short_message(record)
        text = " ".join(text.split())  # one line
        if len(text) > MAX_CAUSE_CHARS:
            text = text[: MAX_CAUSE_CHARS - 3] + "..."
        return text

    def __enter__(self) -> "PrefectErrorFold":
        if not self.enabled:
            return self
        loggers = [logging.getLogger()] + [
            logger for name, logger in list(logging.Logger.manager.loggerDict.items())
            if isinstance(logger, logging.Logger) and (name == "prefect" or name.startswith("prefect."))
        ]
        self._raise_exceptions = logging.raiseExceptions
        logging.raiseExceptions = False
        for logger in loggers:
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) and handler not in self._handlers:
                    handler.addFilter(self._filter)
                    self._handlers.append(handler)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from fp16guard.errors import EnvironmentFailure

        if exc_type is not None and (not issubclass(exc_type, Exception) or issubclass(exc_type, EnvironmentFailure)):
            # Interrupted, or an environment failure (a lost server): the process ends now with
            # fp16guard's one line, and Prefect's services drain their queues at exit, which would
            # print their errors after it. Stay on until the process ends.
            return
        self.restore()

    def restore(self) -> None:
        """Remove the filters and restore ``logging.raiseExceptions`` (idempotent)."""
        if self._raise_exceptions is not None:
            logging.raiseExceptions = self._raise_exceptions
            self._raise_exceptions = None
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        self._handlers.clear()
