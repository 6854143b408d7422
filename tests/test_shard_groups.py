"""Shard groups and the task runner chosen at run time (issue 18): one task measures a group of
shards with one session, each shard cached on its own; the results never depend on the grouping,
the runner or the number of workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fp16guard.settings import RunParameters
from fp16guard.stats.groups import ShardSize, plan_groups


def _params(files: dict, store: Path, **extra) -> RunParameters:
    fields = {"model": files["model"], "calib": [files["calib"]], "holdout": [files["holdout"]], "name": "demo", "version": "1", "store": str(store)}
    return RunParameters(**{**fields, **extra})


def _manifest(result: dict) -> dict:
    return json.loads((Path(result["run_dir"]) / "manifest.json").read_text())


# ------------------------------------------------------------------------------ grouping (no server)
def test_groups_close_on_samples_or_bytes_and_keep_order():
    sizes = [ShardSize(1, 10)] * 10
    assert plan_groups(sizes, group_samples=4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan_groups(sizes, group_samples=100, group_bytes=25) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert plan_groups(sizes) == [list(range(10))]
    # at least one group per worker
    assert plan_groups(sizes, min_groups=3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # a shard larger than a group is a group of its own
    assert plan_groups([ShardSize(1, 1), ShardSize(50, 1), ShardSize(1, 1)], group_samples=8) == [[0, 1], [2]]
    assert plan_groups([]) == []
    with pytest.raises(ValueError):
        plan_groups(sizes, group_samples=0)


def test_shard_size_reads_headers(demo_files):
    from fp16guard.io.lazy_weights import load_graph_only
    from fp16guard.io.model import input_specs, normalize_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.stats.groups import shard_size

    specs = input_specs(normalize_model(load_graph_only(demo_files["model"])))
    ref = discover_shards([demo_files["calib"]])[0]
    size = shard_size(ref, specs)
    import numpy as np

    with np.load(ref.path) as z:
        samples = z[z.files[0]].shape[0]
    assert size.samples == samples > 1 and size.bytes == Path(ref.path).stat().st_size


def test_execution_settings_are_validated():
    from fp16guard.errors import ConfigError
    from fp16guard.settings import parse_parameters

    base = {"model": "m.onnx", "calib": ["c"], "holdout": ["h"], "name": "n", "version": "1"}
    p = parse_parameters(RunParameters, {**base, "execution": {"task_runner": "dask", "workers": 2, "dask_address": "tcp://127.0.0.1:8786"}})
    assert p.execution.task_runner == "dask" and p.execution.workers == 2
    for bad in ({"task_runner": "ray"}, {"workers": 0}, {"group_samples": 0}, {"dask_address": "not an address"}):
        with pytest.raises(ConfigError):
            parse_parameters(RunParameters, {**base, "execution": bad})


def test_cli_flags_reach_the_parameters(demo_files, tmp_path):
    from fp16guard.cli.main import build_parser
    from fp16guard.cli.commands.run import parameters_from_args

    args = build_parser().parse_args([
        "run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--name", "d", "--model-version", "1",
        "--task-runner", "dask", "--workers", "3", "--group-samples", "16", "--group-bytes", "1000000",
    ])
    ex = parameters_from_args(args).execution
    assert (ex.task_runner, ex.workers, ex.group_samples, ex.group_bytes, ex.dask_address) == ("dask", 3, 16, 1000000, None)


# ------------------------------------------------------------------------------ against a Prefect server
def test_group_task_reads_the_per_shard_cache_entries(prefect_api_url, demo_files, tmp_path):
    """An entry the per-shard task wrote is a hit for the group task (same key, same payload)."""
    from prefect import flow

    from fp16guard.io.model import model_digest
    from fp16guard.io.shards import discover_shards, shard_digest
    from tasks.caching import cached, code_digest
    from tasks.stats import STATS_CACHE_EXCLUDE, STATS_MODULES, shard_group_stats_task, shard_stats_task

    store = str(tmp_path / "store")
    refs = discover_shards([demo_files["calib"]])[:2]
    digests = [shard_digest(r) for r in refs]
    sha, code = model_digest(demo_files["model"]), code_digest(*STATS_MODULES)

    @flow
    def both():
        one = shard_stats_task.with_options(**cached(store, "stats", exclude=STATS_CACHE_EXCLUDE))(demo_files["model"], sha, refs[0], digests[0], code)
        group = shard_group_stats_task(store, demo_files["model"], sha, refs, digests, code, label="two")
        return one, group

    one, group = both()
    assert group[0]["cached"] and group[0]["computed_by"] == one["computed_by"]
    assert group[0]["table"].equals(one["table"])
    assert not group[1]["cached"]


@pytest.mark.slow  # three flow runs: 25-30 s on 2 cores; the default suite keeps the per-shard cache inside a group (test above, tests/test_flow.py)
def test_stats_are_identical_whatever_the_grouping(prefect_api_url, demo_files, tmp_path):
    """stats.parquet and shard_stats.parquet are the same bytes for one group of all shards and
    for one shard per group, and a changed shard inside a group is the only one recomputed."""
    import shutil

    from flows.calibrate import calibrate

    whole = calibrate(_params(demo_files, tmp_path / "a"))
    single = calibrate(_params(demo_files, tmp_path / "b", execution={"group_samples": 1, "workers": 2}))
    for name in ("stats.parquet", "shard_stats.parquet"):
        assert (Path(whole["run_dir"]) / name).read_bytes() == (Path(single["run_dir"]) / name).read_bytes(), name
    assert json.loads((Path(whole["run_dir"]) / "plan.json").read_text())["fp32_nodes"] == json.loads((Path(single["run_dir"]) / "plan.json").read_text())["fp32_nodes"]
    assert _manifest(single)["parameters"]["execution"]["group_samples"] == 1

    # One shard changed, all in one group: only that one is computed again.
    calib2 = tmp_path / "calib2"
    shutil.copytree(demo_files["calib"], calib2)
    changed = sorted(calib2.glob("*.npz"))[1]
    import numpy as np

    arrays = dict(np.load(changed))
    key = sorted(arrays)[0]
    arrays[key] = arrays[key] * 0.5
    np.savez(changed, **arrays)
    again = calibrate(RunParameters(**{**_params(demo_files, tmp_path / "a").model_dump(), "calib": [str(calib2)], "version": "2"}))
    m1, m3 = _manifest(whole), _manifest(again)
    computed = {c["shard"].rsplit("/", 1)[-1]: c["computed_by"] for c in m3["inputs"]["calibration"]}
    assert computed.pop(changed.name) == m3["flow_run"]["id"]
    assert set(computed.values()) == {m1["flow_run"]["id"]}


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_run(prefect_api_url, demo_files, tmp_path):
    """A local Dask cluster of two worker processes runs the whole flow: the same stats.parquet
    (bytes), plan and verdict as the default runner; the runner is recorded in the manifest."""
    pytest.importorskip("prefect_dask")
    from flows.calibrate import calibrate

    threads = calibrate(_params(demo_files, tmp_path / "t"))
    dask = calibrate(_params(demo_files, tmp_path / "d", execution={"task_runner": "dask", "workers": 2, "group_samples": 8}))
    t_dir, d_dir = Path(threads["run_dir"]), Path(dask["run_dir"])
    for name in ("stats.parquet", "shard_stats.parquet"):
        assert (t_dir / name).read_bytes() == (d_dir / name).read_bytes(), name
    t_plan, d_plan = (json.loads((d / "plan.json").read_text()) for d in (t_dir, d_dir))
    assert t_plan["fp32_nodes"] == d_plan["fp32_nodes"]
    t_ver, d_ver = (json.loads((d / "verification.json").read_text()) for d in (t_dir, d_dir))
    assert t_ver["passed"] == d_ver["passed"] and t_ver.get("worst_rel_error") == d_ver.get("worst_rel_error")
    m = _manifest(dask)
    assert m["parameters"]["execution"]["task_runner"] == "dask"
    # every shard was computed by this run, in the worker processes
    assert {c["computed_by"] for c in m["inputs"]["calibration"]} == {m["flow_run"]["id"]}
