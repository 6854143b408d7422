"""A run killed with SIGKILL mid-run: the same command then ends verified without help,
reusing the shards the killed run finished, and leaves no staging folder or lock behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli


@pytest.mark.slow
def test_sigkill_mid_run_then_same_command_ends_verified(prefect_api_url, demo_files, tmp_path):
    store = tmp_path / "store"
    args = ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--name", "demo", "--model-version", "1", "--store", str(store), "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fp16guard.cli.main", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api_url},
    )
    records = store / ".cache" / "stats" / "records"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if records.exists() and any(records.iterdir()):
            break  # at least one shard finished: kill while the run goes on
        time.sleep(0.02)
    # Mid-run, proven: the process still works, a shard is finished, nothing is published.
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed"
    assert any(records.iterdir()) and not (store / "demo" / "1" / "runs").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run was killed, not ended on its own"
    assert not (store / "demo" / "1" / "runs").exists(), "the killed run published nothing"
    finished_before = len(list(records.iterdir()))
    assert finished_before >= 1

    again = run_cli(args, api_url=prefect_api_url)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["passed"] and summary["released"]
    manifest = json.loads((Path(summary["run_dir"]) / "manifest.json").read_text())
    this_run = manifest["flow_run"]["id"]
    reused = [c for c in manifest["inputs"]["calibration"] if c["computed_by"] != this_run]
    assert len(reused) == finished_before, "exactly the shards the killed run finished are reused"
    staging = store / "demo" / "1" / ".staging"
    assert not staging.exists(), "the killed run's staging folder is swept (and .staging/ with it)"
    assert not list((store / ".cache" / "locks").rglob("*.lock"))
