"""The task runner of the statistics pass, chosen at run time from ``RunParameters.execution``.

The flow's own runner (one thread) keeps the rest of the DAG in order; the statistics pass opens
the runner made here for its shard groups, so a run started from the UI or a deployment chooses
it from its parameters as the CLI does:

* ``threads``: Prefect's ``ThreadPoolTaskRunner`` with ``workers`` threads (default 1);
* ``dask``: ``prefect_dask.DaskTaskRunner`` (``pip install 'fp16guard[dask]'``), on the cluster at
  ``dask_address`` or on a ``distributed.LocalCluster`` of ``workers`` processes (one thread each,
  no dashboard) started for the pass and stopped after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["RunnerChoice", "stats_runner", "describe"]

#: Local Dask workers when none is set: the CPU count, at most this many.
MAX_DEFAULT_DASK_WORKERS = 4


@dataclass(frozen=True)
class RunnerChoice:
    """A task runner, and what the statistics pass needs to know about it."""

    runner: object
    kind: str
    workers: int  # groups that run at once (0: unknown, an existing cluster)
    threads: int  # onnxruntime intra-op threads per session (0: onnxruntime's choice)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def stats_runner(execution) -> RunnerChoice:
    """The runner for ``execution`` (:class:`fp16guard.settings.ExecutionSettings`).

    Raises:
        ConfigError: ``dask`` was asked for and prefect-dask is not installed.
    """
    if execution.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        workers = execution.workers or 1
        threads = 0 if workers == 1 else max(1, _cpus() // workers)
        return RunnerChoice(ThreadPoolTaskRunner(max_workers=workers), "threads", workers, threads)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        from fp16guard.errors import ConfigError

        raise ConfigError("task runner 'dask' needs prefect-dask and distributed; install them with pip install 'fp16guard[dask]'") from None
    if execution.dask_address:
        return RunnerChoice(DaskTaskRunner(address=execution.dask_address), "dask", 0, 0)
    workers = execution.workers or max(1, min(MAX_DEFAULT_DASK_WORKERS, _cpus()))
    cluster_kwargs = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,  # no fixed port: runs on a shared host must not collide
        "memory_limit": 0,  # onnxruntime sessions are the work: no Dask memory pauses
    }
    runner = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)
    return RunnerChoice(runner, "dask", workers, max(1, _cpus() // workers))


def describe(choice: RunnerChoice, execution) -> str:
    """One line for logs, e.g. ``dask: local cluster of 2 worker processes``."""
    if choice.kind == "threads":
        return f"threads: {choice.workers} at a time"
    if execution.dask_address:
        return f"dask: cluster at {execution.dask_address}"
    return f"dask: local cluster of {choice.workers} worker processes"
