"""Two runs of one name and version started at once (issue 3, item 7)."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


@pytest.mark.slow
def test_two_simultaneous_runs_both_finish_and_one_is_released(prefect_api_url, demo_files, tmp_path):
    store = tmp_path / "store"
    args = [sys.executable, "-m", "fp16guard.cli.main", "run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"],
            "--name", "race", "--version", "1", "--store", str(store), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api_url}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    summaries = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(s["released"] for s in summaries) == [False, True]
    assert len({s["run_id"] for s in summaries}) == 2
    release = json.loads((store / "race" / "1" / "release.json").read_text())
    assert release["run_id"] == next(s["run_id"] for s in summaries if s["released"])
    # Both runs are complete and their files match their recorded hashes.
    from fp16guard.store.audit import verify_run

    for s in summaries:
        assert verify_run(str(store), "race", "1", s["run_id"]) == []
        assert (Path(s["run_dir"]) / "model.mixed.onnx").is_file()
