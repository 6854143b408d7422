"""Plan task: which nodes stay FP32 and why."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from fp16guard.io import atomic
from fp16guard.settings import PlanSettings


@task(name="make-plan")
def plan_task(model_path: str, stats_path: str, settings: PlanSettings, out_dir: str) -> dict:
    """Derive the precision plan from the reduced statistics and write ``plan.json``.

    Returns:
        The plan as written (``Plan.to_dict()``).
    """
    from fp16guard.io.model import load_graph
    from fp16guard.plan.planner import make_plan
    from fp16guard.stats.schema import read_stats

    model = load_graph(model_path)  # weights stay in the file; make_plan scans them from disk in chunks
    plan = make_plan(model, read_stats(stats_path), settings, weights_dir=Path(model_path).parent).to_dict()
    atomic.write_json(Path(out_dir) / "plan.json", plan)
    return plan
