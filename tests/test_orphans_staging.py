"""Ctrl-C mid-run: exit 130, one line, nothing published and no ``.staging/`` left in the store
(issue 20: an empty ``.staging/`` stayed; an interrupt between two tasks left the run's folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, wait_for_first_shard


def _start_run(demo_files, store, api_url) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fp16guard.cli.main", "run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"],
         "--name", "demo", "--model-version", "1", "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api_url},
    )


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.0, 1.0], ids=["in-statistics", "later"])
def test_sigint_mid_run_exits_130_and_leaves_no_staging(prefect_api_url, demo_files, tmp_path, after_s):
    store = tmp_path / "store"
    proc = _start_run(demo_files, store, prefect_api_url)
    records = store / ".cache" / "stats" / "records"
    version = store / "demo" / "1"
    try:
        wait_for_first_shard(proc, store)
        time.sleep(after_s)
        # Mid-run: a shard finished, the process still works, and the run is staged, not published.
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert any(records.iterdir()) and not (version / "runs").exists()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert [l for l in err.splitlines() if l.strip()] == ["fp16guard: interrupted"], err
    assert not (version / "runs").exists() or not any((version / "runs").iterdir()), "nothing is published"
    assert not (version / ".staging").exists(), f"a staging folder is left: {list((version / '.staging').rglob('*'))}"
