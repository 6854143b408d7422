"""Plan task: which nodes stay FP32 and why (rules, then repair on calibration data)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from fp16guard.io import atomic
from fp16guard.io.shards import ShardRef
from fp16guard.settings import PlanSettings, VerifySettings


@task(name="make-plan")
def plan_task(
    model_path: str,
    stats_path: str,
    settings: PlanSettings,
    out_dir: str,
    calibration: list[ShardRef] | None = None,
    verify_settings: VerifySettings | None = None,
    batch_size: int | None = None,
) -> dict:
    """Derive the precision plan from the reduced statistics, repair it, write ``plan.json``.

    Args:
        model_path: the FP32 model.
        stats_path: ``stats.parquet``.
        settings: plan settings (rules, repair budget, ``repair_parallel``: candidate checks at
            once, in a thread pool of this task's process, whatever the run's task runner).
        out_dir: the run folder (``plan.json`` is written there, atomically).
        calibration: calibration shards for repair's checks (:func:`fp16guard.plan.repair.repair_plan`);
            None: no repair, and no ``repair`` record in the plan.
        verify_settings: the numeric gate repair aims at (the run's verification settings);
            default ``VerifySettings()``.
        batch_size: samples per inference call during repair.

    Returns:
        The plan as written (``Plan.to_dict()``).
    """
    from fp16guard.io.model import load_graph, load_model
    from fp16guard.plan.records import Plan
    from fp16guard.plan.repair import repair_plan
    from fp16guard.plan.strategies import plan_model
    from fp16guard.stats.schema import read_stats

    # pin reads the graph only (make_plan scans weights from disk in chunks); fold/auto rewrite
    # weights, so they load them. The plan is for `planned` (the folded model when folding won).
    model = load_graph(model_path) if settings.strategy == "pin" else load_model(model_path)
    data, planned = plan_model(model, read_stats(stats_path), settings, weights_dir=Path(model_path).parent)
    plan = Plan.from_dict(data)
    if calibration is not None:
        # Repair builds and runs candidates: it needs the weights. A plan that passes is unchanged.
        full = load_model(model_path) if settings.repair and settings.strategy == "pin" else planned
        with _check_executor(settings.repair_parallel) as executor:
            plan = repair_plan(full, plan, calibration, settings, verify_settings or VerifySettings(), batch_size, on_step=_log_step, executor=executor)
    data = plan.to_dict()
    atomic.write_json(Path(out_dir) / "plan.json", data)
    return data


def _check_executor(parallel: int):
    """Where repair's candidate checks run at once: threads of this process (None for one at a
    time). Threads with the ``dask`` task runner too: a check replays the FP32 reference
    outputs and the memo that live in this process, and Dask's executor
    (``distributed.Client.get_executor()``) would ship the model and the reference to every
    worker; onnxruntime releases the GIL, so threads use the cores."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext

    if parallel <= 1:
        return nullcontext(None)
    return ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="fp16guard-check")


def _log_step(step) -> None:
    """Each check of the search as one line in the task run's log (the UI shows it as it runs)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    from fp16guard.report.plan_summary import step_line

    try:
        logger = get_run_logger()
    except MissingContextError:  # called outside a task run (plan_task.fn in tests): no log
        return
    logger.info(step_line(step))
