"""Exact results whatever the parallelism (issue 18, item 4): the whole flow on the demo model
against a real Prefect server, with threads (1 and 2 workers), and a local Dask cluster of two
worker processes, at different group sizes. ``stats.parquet`` is the same bytes, the plan the
same FP32 set, ``verification.json`` the same verdict and the same figures, float for float —
and the holdout really was verified in several groups where the settings ask for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fp16guard.settings import RunParameters
from tests.test_fanout_verify import cut_holdout

CONFIGS = {
    "threads-1": {"workers": 1},
    "threads-2": {"task_runner": "threads", "workers": 2, "group_samples": 8},
    "threads-2-single": {"task_runner": "threads", "workers": 2, "group_samples": 1},
    "dask-2": {"task_runner": "dask", "workers": 2, "group_samples": 16},
}


def _run(files: dict, holdout: Path, store: Path, execution: dict) -> dict:
    from flows.calibrate import calibrate

    params = RunParameters(
        model=files["model"], calib=[files["calib"]], holdout=[str(holdout)], name="demo", version="1", store=str(store),
        execution=execution, profile_batches=[1, 4],  # two batch tasks (not timed on the CPU: the record says why)
    )
    return calibrate(params)


def _task_names(flow_run_id: str) -> list[str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return [r.name for r in runs]

    return asyncio.run(read())


@pytest.mark.slow  # four flow runs, one with a Dask cluster: ~60-90 s on 2 cores
def test_results_are_identical_for_any_runner_workers_and_grouping(prefect_api_url, demo_files, tmp_path):
    pytest.importorskip("prefect_dask")  # the [dask] extra; installed with [test]
    holdout = tmp_path / "holdout"
    cut_holdout(demo_files["holdout"], holdout)  # 7 shards of 3-16 samples
    runs = {name: _run(demo_files, holdout, tmp_path / name, execution) for name, execution in CONFIGS.items()}
    base = Path(runs["threads-1"]["run_dir"])
    base_plan = json.loads((base / "plan.json").read_text())
    base_ver = json.loads((base / "verification.json").read_text())
    assert base_ver["samples"] == 64 and len(base_ver["shards"]) == 7 and base_ver["passed"]
    for name, result in runs.items():
        run = Path(result["run_dir"])
        for table in ("stats.parquet", "shard_stats.parquet"):
            assert (run / table).read_bytes() == (base / table).read_bytes(), f"{name}: {table}"
        assert json.loads((run / "plan.json").read_text())["fp32_nodes"] == base_plan["fp32_nodes"], name
        ver = json.loads((run / "verification.json").read_text())
        for key in ("passed", "reason", "outputs", "samples", "shards", "tolerances", "execution", "emulated"):
            assert ver.get(key) == base_ver.get(key), f"{name}: verification {key}"
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["parameters"]["execution"]["task_runner"] == (CONFIGS[name].get("task_runner") or "threads")
        assert manifest["profile"]["batches"] == [] and "not measured" in manifest["profile"]["note"]
        names = _task_names(manifest["flow_run"]["id"])
        verify_groups = [n for n in names if n.startswith("verify holdout")]
        profiles = [n for n in names if n.startswith("profile batch")]
        assert sorted(profiles) == ["profile batch 1", "profile batch 4"], f"{name}: {names}"
        # the holdout went in groups as the settings say: one for the default, several otherwise
        assert (len(verify_groups) == 1) == (name == "threads-1"), f"{name}: {verify_groups}"
    assert len([n for n in _task_names(json.loads((Path(runs["threads-2-single"]["run_dir"]) / "manifest.json").read_text())["flow_run"]["id"]) if n.startswith("verify holdout")]) == 7
