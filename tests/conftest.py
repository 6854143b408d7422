"""Shared fixtures: one real Prefect server for the whole session, and the demo example on disk.

docs/FACTS.md #14: ``prefect_test_harness`` takes 20-30 s to start here, so it is one session-scoped
fixture, started only by the tests that need it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_api_url():
    """Start a real Prefect server (temporary SQLite database) for this test session.

    Yields:
        The server's API URL; in-process flow calls use it through the harness's settings
        context, subprocesses get it through ``PREFECT_API_URL`` (see :func:`run_cli`).
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # 180 s: a busy 2-core machine can take minutes to start it; a quiet one takes 20-30 s, and
    # the limit only bounds a hang.
    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory) -> dict:
    """The built-in demo example (model, calibration and holdout folders), written once."""
    from fp16guard.cli.commands.demo import prepare

    return prepare("demo", tmp_path_factory.mktemp("demo"))


def calib_with_nan(src: str | Path, dest: Path, index: int = 0) -> Path:
    """Copy the calibration folder ``src`` to ``dest`` with one NaN at flat ``index`` of the first
    input of its first shard (bad data that only reading the values finds). Returns that shard."""
    import shutil

    import numpy as np

    shutil.copytree(src, dest)
    first = sorted(Path(dest).glob("*.npz"))[0]
    arrays = dict(np.load(first))
    key = sorted(arrays)[0]
    arrays[key] = arrays[key].copy()
    arrays[key].flat[index] = np.nan
    np.savez(first, **arrays)
    return first


def run_cli(args: list[str], env: dict | None = None, api_url: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m fp16guard.cli.main ARGS`` in a subprocess, as a user would run ``fp16guard``.

    Args:
        args: command-line arguments after ``fp16guard``.
        env: extra environment variables.
        api_url: Prefect API to use (the session server); without it the CLI would start its
            own embedded server.
        timeout: seconds before the test fails.
    """
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if api_url:
        full_env["PREFECT_API_URL"] = api_url
    return subprocess.run(
        [sys.executable, "-m", "fp16guard.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(REPO),
    )


def flow_run_line(proc) -> str:
    """The ``flow run: <url>`` line of a running ``fp16guard run`` (lines before it, such as a
    predecessor marked Crashed, are skipped); '' when stdout ends first."""
    for line in proc.stdout:
        if line.startswith("flow run: "):
            return line
    return ""


def wait_for_first_shard(proc, store) -> None:
    """Wait until a running ``fp16guard run`` has printed its ``flow run:`` line and cached its
    first statistics shard in ``store`` (at most 120 s, or until it ends): the point from which
    a test's kill or interrupt lands mid-run."""
    line = flow_run_line(proc)
    assert line.startswith("flow run: "), (line, proc.stderr.read() if proc.poll() is not None else "")
    records = Path(store) / ".cache" / "stats" / "records"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (records.is_dir() and any(records.iterdir())):
        time.sleep(0.02)
