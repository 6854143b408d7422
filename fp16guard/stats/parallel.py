"""Measure many shards at once in one process: several statistics sessions, one thread each.

Why: every :class:`~fp16guard.stats.collect.StatsSession` runs on one onnxruntime thread
(:data:`~fp16guard.stats.collect.STATS_THREADS`), so that the figures do not depend on the
parallelism; the cores are used by measuring shards at once instead. onnxruntime releases the
GIL while it runs, so threads suffice. Each shard's table depends on that shard alone, and the
tables come back in shard order, so the result is the same bytes for any number of workers.

Used by the paths without a task runner (``fp16guard stats``, :func:`fp16guard.convert`); the
flow fans shard groups out on its runner instead.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import pyarrow as pa

from fp16guard.stats.collect import StatsSession

__all__ = ["MAX_DEFAULT_WORKERS", "SHARDS_PER_SESSION", "default_workers", "measure_shards"]

#: Sessions at once when none is asked for: the CPU count, at most this many (each session holds
#: its own instrumented model and activations).
MAX_DEFAULT_WORKERS = 4
#: Fewest shards each session measures when the count is chosen here (a session's creation costs
#: about as much as measuring a few shards: OCR recogniser, 2 shards, 2 sessions took 1.4x one).
SHARDS_PER_SESSION = 4


def default_workers() -> int:
    """The CPUs this process may use, at most :data:`MAX_DEFAULT_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


def measure_shards(
    model_path: str | os.PathLike,
    refs: Sequence,
    batch_size: int | None = None,
    providers: list[str] | None = None,
    workers: int | None = None,
    on_shard: Callable[[str], None] | None = None,
) -> tuple[list[pa.Table], list[str]]:
    """Per-shard statistics of ``refs``, measured by up to ``workers`` sessions at once.

    Args:
        model_path: the FP32 ``.onnx`` file.
        refs: the shards (:class:`fp16guard.io.shards.ShardRef`), in the order of the result.
        batch_size: samples per inference call (see :class:`StatsSession`).
        providers: onnxruntime execution providers; default CPU.
        workers: sessions at once; default :func:`default_workers`, and at least
            :data:`SHARDS_PER_SESSION` shards a session; never more sessions than shards.
        on_shard: called with each shard's name when it is measured (from a worker thread).

    Returns:
        The tables, in the order of ``refs``, and the providers the first session used.

    Raises:
        Whatever :meth:`StatsSession.run` raises for the first failing shard in order; the
        sessions are closed in every case.
    """
    # A session costs its creation (seconds for a large model, and the constants measured again):
    # by default each one measures at least SHARDS_PER_SESSION shards.
    count = max(1, min(workers or min(default_workers(), len(refs) // SHARDS_PER_SESSION), len(refs) or 1))
    sessions: list[StatsSession] = []
    guard = threading.Lock()
    local = threading.local()

    def session() -> StatsSession:
        if getattr(local, "session", None) is None:
            opened = StatsSession(model_path, batch_size=batch_size, providers=providers).__enter__()
            with guard:
                sessions.append(opened)
            local.session = opened
        return local.session

    def measure(ref) -> pa.Table:
        table = session().run(ref)
        if on_shard is not None:
            on_shard(ref.name)
        return table

    try:
        if count == 1:
            tables = [measure(ref) for ref in refs]
        else:
            with ThreadPoolExecutor(max_workers=count, thread_name_prefix="fp16guard-stats") as pool:
                tables = list(pool.map(measure, refs))
        used = sessions[0].providers_used if sessions else []
    finally:
        for opened in sessions:
            opened.__exit__(None, None, None)
    return tables, used
