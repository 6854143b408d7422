"""The task runner of the fanned-out passes, chosen at run time from ``RunParameters.execution``.

The flow's own runner (one thread) keeps the rest of the DAG in order; the statistics pass, the
holdout verification and the GPU profile submit their group tasks to the runner made here, so a
run started from the UI or a deployment chooses it from its parameters as the CLI does:

* ``threads``: Prefect's ``ThreadPoolTaskRunner`` with ``workers`` threads (default 1);
* ``dask``: ``prefect_dask.DaskTaskRunner`` (``pip install 'fp16guard[dask]'``), on the cluster at
  ``dask_address`` or on a ``distributed.LocalCluster`` of ``workers`` processes (one thread each,
  no dashboard) started for the run and stopped after it;
* ``dask-cuda``: the same runner on ``dask_cuda.LocalCUDACluster`` (``pip install
  'fp16guard[dask-cuda]'``): one worker process per visible GPU (or the first ``workers``), each
  pinned to its GPU by its own ``CUDA_VISIBLE_DEVICES``, so its onnxruntime sessions use CUDA
  device 0, its GPU (:mod:`fp16guard.cluster`); or an existing dask-cuda cluster at
  ``dask_address``.

What cannot start here (a missing package, no GPU) is one ConfigError line, raised by
:func:`fp16guard.cluster.check_runner` in the preflight and again here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fp16guard.stats.collect import STATS_THREADS

__all__ = ["FanOut", "RunnerChoice", "stats_runner", "describe"]

#: Workers when none is set (threads, or local Dask processes): the CPU count, at most this many.
MAX_DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class RunnerChoice:
    """A task runner, and what the fanned-out passes need to know about it.

    Attributes:
        runner: the Prefect task runner (not yet entered).
        kind: ``threads``, ``dask`` or ``dask-cuda``.
        workers: tasks that run at once (0: unknown, an existing cluster).
        threads: onnxruntime intra-op threads per statistics session: always
            :data:`fp16guard.stats.collect.STATS_THREADS` (one), whatever the worker count, since
            onnxruntime's results depend on its thread count (the session pins it too).
        device_per_worker: each worker has a GPU of its own (dask-cuda), so timings may run at
            once; otherwise the profile's batches are timed one after another.
    """

    runner: object
    kind: str
    workers: int
    threads: int
    device_per_worker: bool = False


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def stats_runner(execution) -> RunnerChoice:
    """The runner for ``execution`` (:class:`fp16guard.settings.ExecutionSettings`).

    Raises:
        ConfigError: ``dask`` or ``dask-cuda`` was asked for and its packages are not installed,
            or ``dask-cuda`` sees no GPU (:func:`fp16guard.cluster.check_runner`).
    """
    if execution.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        # Statistics sessions run on one thread each (exact whatever the parallelism), so the
        # cores are used by running groups at once: the CPU count, at most 4 (a session each).
        workers = execution.workers or max(1, min(MAX_DEFAULT_WORKERS, _cpus()))
        return RunnerChoice(ThreadPoolTaskRunner(max_workers=workers), "threads", workers, STATS_THREADS)
    from fp16guard.cluster import check_runner

    check_runner(execution)
    from prefect_dask import DaskTaskRunner

    kind = execution.task_runner
    if execution.dask_address:
        return RunnerChoice(DaskTaskRunner(address=execution.dask_address), kind, 0, STATS_THREADS, device_per_worker=kind == "dask-cuda")
    if kind == "dask-cuda":
        from fp16guard.cluster import cuda_cluster_kwargs, visible_gpus

        kwargs = cuda_cluster_kwargs(visible_gpus(), execution.workers)
        workers = kwargs["n_workers"]
        runner = DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs=kwargs)
        return RunnerChoice(runner, kind, workers, STATS_THREADS, device_per_worker=True)
    workers = execution.workers or max(1, min(MAX_DEFAULT_WORKERS, _cpus()))
    cluster_kwargs = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,  # no fixed port: runs on a shared host must not collide
        "memory_limit": 0,  # onnxruntime sessions are the work: no Dask memory pauses
    }
    runner = DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs)
    return RunnerChoice(runner, "dask", workers, STATS_THREADS)


def describe(choice: RunnerChoice, execution) -> str:
    """One line for logs, e.g. ``dask: local cluster of 2 worker processes``."""
    if choice.kind == "threads":
        return f"threads: {choice.workers} at a time"
    if execution.dask_address:
        return f"{choice.kind}: cluster at {execution.dask_address}"
    if choice.kind == "dask-cuda":
        return f"dask-cuda: {choice.workers} worker(s), one per GPU"
    return f"dask: local cluster of {choice.workers} worker processes"


class FanOut:
    """The task runner of one run's fanned-out passes: built from ``execution`` and entered on
    first use (a run that fails before its statistics starts no cluster), then kept open for the
    statistics, the holdout verification and the profile, and closed by :meth:`close` (a local
    Dask or dask-cuda cluster is stopped then).

    Args:
        execution: :class:`fp16guard.settings.ExecutionSettings`.
    """

    def __init__(self, execution) -> None:
        self.execution = execution
        self._choice: RunnerChoice | None = None
        self._entered = None

    @property
    def choice(self) -> RunnerChoice:
        """The runner and its facts (:func:`stats_runner`; raises ConfigError as it does)."""
        if self._choice is None:
            self._choice = stats_runner(self.execution)
        return self._choice

    @property
    def runner(self):
        """The entered task runner (entered here the first time)."""
        if self._entered is None:
            self._entered = self.choice.runner.__enter__()
        return self._entered

    @property
    def workers(self) -> int:
        """Tasks that run at once: the choice's, or the cluster's worker threads (at least 1)."""
        return self.choice.workers or _cluster_workers(self.runner)

    def describe(self) -> str:
        """One line for logs (:func:`describe`)."""
        return describe(self.choice, self.execution)

    def close(self) -> None:
        """Leave the runner if it was entered (idempotent)."""
        if self._entered is not None:
            self._entered = None
            self.choice.runner.__exit__(None, None, None)

    def __enter__(self) -> "FanOut":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cluster_workers(runner) -> int:
    """Worker threads of the Dask cluster a runner is connected to (1 when it cannot say)."""
    try:
        return max(1, sum(runner.client.nthreads().values()))
    except Exception:  # noqa: BLE001 — only sizes groups
        return 1
