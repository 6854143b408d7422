"""Issue 3 'done when', against the S3-compatible server: the real flow twice with different data
for one version, both runs and one release in history, the report stored, every hash verified."""

from __future__ import annotations

import json
import shutil

import pytest

from fixtures_s3 import s3_root, s3_server  # noqa: F401
from fp16guard.cli.main import main
from fp16guard.settings import RunParameters
from fp16guard.store.audit import history, verify_run
from fp16guard.store.runs import Store


@pytest.mark.slow
def test_flow_twice_on_s3_store(prefect_api_url, demo_files, s3_root, tmp_path, capsys):
    from flows.calibrate import calibrate
    from fp16guard import examples

    base = dict(model=demo_files["model"], holdout=[demo_files["holdout"]], name="demo", version="1", store=s3_root)
    first = calibrate(RunParameters(calib=[demo_files["calib"]], **base))
    calib2 = tmp_path / "calib2"
    shutil.copytree(demo_files["calib"], calib2)
    examples.write_shards("demo", calib2, 1, 8, seed=123, prefix="zz-new")
    second = calibrate(RunParameters(calib=[str(calib2)], **base))
    assert first["passed"] and first["released"] and second["passed"] and not second["released"]
    assert first["run_dir"].startswith("s3://") and first["run_id"] != second["run_id"]

    store = Store(s3_root)
    assert sorted(store.runs("demo", "1")) == sorted([first["run_id"], second["run_id"]])
    rows = {r["run_id"]: r for r in history(store, "demo", "1")}
    assert rows[first["run_id"]]["released"] == "current" and rows[second["run_id"]]["released"] == ""
    assert all(r["status"] == "verified" and r["fp32_nodes"] > 0 for r in rows.values())
    for run_id in rows:
        assert verify_run(store, "demo", "1", run_id, check_inputs=True) == []
    html = store.read_bytes("demo", "1", first["run_id"], "report.html").decode()
    assert "<svg" in html and "FP16 max 65504" in html
    m1 = store.read_json("demo", "1", first["run_id"], "manifest.json")
    m2 = store.read_json("demo", "1", second["run_id"], "manifest.json")
    assert len(m2["inputs"]["calibration"]) == len(m1["inputs"]["calibration"]) + 1
    # The shard cache lives in the S3 store too: the old shards came from the first run's results.
    computed = [c["computed_by"] for c in m2["inputs"]["calibration"]]
    assert computed == [m1["flow_run"]["id"]] * len(m1["inputs"]["calibration"]) + [m2["flow_run"]["id"]]
    assert store.fs.fs.ls(f"{store.fs.root}/.cache/stats/results"), "shard results are stored in the store"

    assert main(["history", "demo", "--json", "--store", s3_root]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["runs"]) == 2 and [r["run_id"] for r in data["releases"]["1"]] == [first["run_id"]]
    assert main(["verify-store", "demo", "1", "--store", s3_root]) == 0
    store.release("demo", "1", second["run_id"], promote=True)
    capsys.readouterr()
    assert main(["show", "demo", "1", "--store", s3_root]) == 0
    assert capsys.readouterr().out.startswith(f"run demo/1/{second['run_id']}: verified (current release)")
