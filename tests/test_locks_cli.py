"""Cache locks held by a *live* run, through the CLI: the wait says what it waits for, is bounded
(exit 3), and Ctrl-C ends it promptly (exit 130) leaving no staging folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_cli
from fp16guard.store.locks import _proc_start


def _cli(args, api_url, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "fp16guard.cli.main", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api_url, **env},
    )


def _read_until_waiting(proc, timeout_s: float) -> None:
    """Read ``proc``'s stderr until it says which lock holder it waits for (at most ``timeout_s``)."""
    seen = ""
    deadline = time.monotonic() + timeout_s
    while "waiting for pid" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert "waiting for pid" in seen, seen


@pytest.mark.slow
def test_live_lock_wait_is_reported_bounded_and_interruptible(prefect_api_url, demo_files, tmp_path):
    store = tmp_path / "store"
    args = ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--name", "demo", "--model-version", "1", "--store", str(store)]
    first = run_cli(args, api_url=prefect_api_url)
    assert first.returncode == 0, first.stderr
    # Forget the cached shards and lock their keys by a live process (another run computing them).
    records = store / ".cache" / "stats" / "records"
    keys = [r.name for r in records.iterdir()]
    for r in records.iterdir():
        r.unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        locks = store / ".cache" / "locks" / "stats"
        for key in keys:
            (locks / f"{key}.lock").write_text(json.dumps({
                "holder": "other-run", "pid": holder.pid, "host": socket.gethostname(), "proc_start": _proc_start(holder.pid),
                "acquired_at": time.time(), "expires_at": time.time() + 3600, "what": "stats cache entry",
            }))
        # Bounded: a live holder past FP16GUARD_LOCK_WAIT_S is exit 3, one line naming it.
        bounded = _cli(args + ["--model-version", "2"], prefect_api_url, FP16GUARD_LOCK_WAIT_S="3")
        _, err = bounded.communicate(timeout=300)
        assert bounded.returncode == 3, err
        assert f"waiting for pid {holder.pid}" in err
        last = [l for l in err.splitlines() if l.startswith("fp16guard: error")]
        assert last and f"pid {holder.pid}" in last[-1] and "FP16GUARD_LOCK_WAIT_S" in last[-1]
        assert "Traceback" not in err
        # Ctrl-C (exit 130 = 128 + SIGINT), then SIGTERM (exit 143 = 128 + SIGTERM), while
        # waiting: the run ends promptly with the shell's status for that signal, with no
        # staging folder left.
        for version, sig, exit_status in (("3", signal.SIGINT, 130), ("4", signal.SIGTERM, 143)):
            waiting = _cli(args + ["--model-version", version], prefect_api_url)
            _read_until_waiting(waiting, 240)
            waiting.send_signal(sig)
            sent = time.monotonic()
            _, err = waiting.communicate(timeout=120)
            assert time.monotonic() - sent < 30
            assert waiting.returncode == exit_status, (sig.name, waiting.returncode, err[-2000:])
            assert "Traceback" not in err
            staging = store / "demo" / version / ".staging"
            assert not staging.exists() or not any(staging.iterdir())
    finally:
        holder.kill()
        holder.wait()
