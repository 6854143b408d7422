"""The Prefect flow against a real Prefect server: artifacts, caching, gate, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fp16guard.errors import NonFiniteError, VerificationFailed
from fp16guard.settings import RunParameters
from conftest import calib_with_nan

RUN_FILES = {"stats.parquet", "shard_stats.parquet", "plan.json", "model.mixed.onnx", "verification.json", "manifest.json", "report.html"}


def _params(files: dict, store: Path, **extra) -> RunParameters:
    fields = {"model": files["model"], "calib": [files["calib"]], "holdout": [files["holdout"]], "name": "demo", "version": "1", "store": str(store)}
    return RunParameters(**{**fields, **extra})


def _manifest(result: dict) -> dict:
    return json.loads((Path(result["run_dir"]) / "manifest.json").read_text())


@pytest.fixture()
def store(tmp_path) -> Path:
    return tmp_path / "store"


def test_flow_writes_verified_run_and_caches_shards(prefect_api_url, demo_files, store, tmp_path):
    from flows.calibrate import calibrate

    first = calibrate(_params(demo_files, store))
    assert first["passed"] and first["released"] and first["status"] == "verified"
    run_dir = Path(first["run_dir"])
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    m1 = _manifest(first)
    assert m1["inputs"]["model"]["sha256"] and len(m1["inputs"]["calibration"]) == 4
    assert all(c["computed_by"] == m1["flow_run"]["id"] for c in m1["inputs"]["calibration"])
    for name, rec in m1["outputs"].items():
        import hashlib

        assert hashlib.sha256((run_dir / name).read_bytes()).hexdigest() == rec["sha256"], name
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["fp32_nodes"], "the demo model overflows: some nodes must stay FP32"
    # The all-FP16 build overflows; the range-rule plan passes on calibration (or, where only
    # some of its guards were needed, the search gives the rest back).
    assert plan["repair"]["outcome"] in ("unchanged", "shrunk"), plan["repair"]

    # Same inputs: every shard comes from the cache (computed by the first run).
    second = calibrate(_params(demo_files, store))
    m2 = _manifest(second)
    assert m2["flow_run"]["id"] != m1["flow_run"]["id"]
    assert [c["computed_by"] for c in m2["inputs"]["calibration"]] == [m1["flow_run"]["id"]] * 4
    assert not second["released"], "a later run replaces the release only with promote"

    # One new shard (a copy of the data under a new name would hash the same: write new data).
    calib2 = tmp_path / "calib2"
    shutil.copytree(demo_files["calib"], calib2)
    from fp16guard import examples

    examples.write_shards("demo", calib2, 1, 8, seed=99, prefix="zz-new")
    third = calibrate(RunParameters(**{**_params(demo_files, store).model_dump(), "calib": [str(calib2)]}))
    m3 = _manifest(third)
    computed = {c["shard"].rsplit("/", 1)[-1]: c["computed_by"] for c in m3["inputs"]["calibration"]}
    assert computed.pop("zz-new-0000.npz") == m3["flow_run"]["id"]
    assert set(computed.values()) == {m1["flow_run"]["id"]}, "old shards are not recomputed (the path changed, the content did not)"


def test_failed_verification_rejects_run(prefect_api_url, demo_files, store):
    from flows.calibrate import calibrate

    # A tolerance FP16 cannot meet: the run must end Failed, be kept as rejected, and release nothing.
    # (Repair off: repair would meet it by keeping every node FP32.)
    params = _params(demo_files, store, verify={"max_rel_error": 1e-9, "min_cosine": 1.0}, plan={"repair": False})
    with pytest.raises(VerificationFailed) as info:
        calibrate(params)
    assert "relative error" in info.value.reason or "cosine" in info.value.reason
    runs = list((store / "demo" / "1" / "runs").iterdir())
    assert len(runs) == 1
    status = json.loads((runs[0] / "status.json").read_text())
    assert status["status"] == "rejected" and status["reason"]
    assert not (store / "demo" / "1" / "release.json").exists()


def test_nan_in_calibration_data_leaves_no_run(prefect_api_url, demo_files, store, tmp_path):
    from flows.calibrate import calibrate

    bad = tmp_path / "bad"
    first = calib_with_nan(demo_files["calib"], bad, index=3)
    with pytest.raises(NonFiniteError, match=first.name):
        calibrate(RunParameters(**{**_params(demo_files, store).model_dump(), "calib": [str(bad)]}))
    version_dir = store / "demo" / "1"
    assert not (version_dir / "runs").exists() or not any((version_dir / "runs").iterdir())
    staging = version_dir / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_ui_artifacts_and_release_asset_event(prefect_api_url, demo_files, store):
    """The Prefect UI gets a summary, a tensor table and a report link under keys derived from
    name and version; the released artifact is recorded as an asset materialization."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from flows.calibrate import calibrate

    result = calibrate(_params(demo_files, store, name="ui-Model_v2", version="7.1"))
    flow_run_id = _manifest(result)["flow_run"]["id"]
    keys = ["fp16guard-ui-model-v2-7-1-summary", "fp16guard-ui-model-v2-7-1-tensors", "fp16guard-ui-model-v2-7-1-report"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        by_key = {a.key: a for a in artifacts if str(a.flow_run_id) == flow_run_id}
        assert set(by_key) == set(keys)
        assert "verified" in by_key[keys[0]].data and "Nodes kept in FP32" in by_key[keys[0]].data
        assert "report.html" in by_key[keys[2]].data
        table = json.loads(by_key[keys[1]].data) if isinstance(by_key[keys[1]].data, str) else by_key[keys[1]].data
        assert table and {"tensor", "max_abs", "of_fp16_max"} <= set(table[0])
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        assert runs and runs[0].state.is_completed()
    # The asset event: the materializing task ran in this flow run and named the released file.
    import asyncio

    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    async def materializations():
        async with get_client() as client:
            response = await client._client.post(
                "/events/filter",
                json={"filter": EventFilter(event=EventNameFilter(prefix=["prefect.asset.materialization"]),
                                            resource=EventResourceFilter(id_prefix=["file://"])).model_dump(mode="json"), "limit": 50},
            )
            response.raise_for_status()
            return response.json()["events"]

    import time

    released = f"file://{result['run_dir']}/model.mixed.onnx"
    deadline = time.monotonic() + 30  # events reach the server's store asynchronously
    while True:
        events = asyncio.run(materializations())
        mine = [e for e in events if e["resource"]["prefect.resource.id"] == released]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine, [e["resource"]["prefect.resource.id"] for e in events]
    related = {r["prefect.resource.id"] for r in mine[0]["related"]}
    assert f"file://{demo_files['model']}" in related or any(r.endswith(Path(demo_files["model"]).name) for r in related)
