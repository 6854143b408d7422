"""A killed run's flow run ends Crashed on the server, not RUNNING for ever (issue 20).

Against the session's real Prefect server: a run SIGKILLed mid-run is marked Crashed by the next
``fp16guard run``; a broken stale cache lock marks the flow run that held it Crashed when that
run's process is gone, and leaves it alone when only a worker of a live flow died.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, flow_run_line, run_cli


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped) on this host."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _flow_run(name: str, labels: dict | None = None):
    """A flow run of flow ``name`` set RUNNING on the server, with ``labels``."""
    from prefect import flow
    from prefect.states import Running

    @flow(name=name)
    def _f():  # pragma: no cover - never runs; only its name matters
        return None

    with _client() as client:
        run = client.create_flow_run(_f, state=Running())
        if labels:
            client.update_flow_run_labels(run.id, labels)
        return run.id


def _state(run_id) -> str:
    with _client() as client:
        return client.read_flow_run(run_id).state.type.value


def _labels(pid: int, host: str | None = None) -> dict:
    return {"fp16guard.process.pid": str(pid), "fp16guard.process.host": host or socket.gethostname()}


@pytest.mark.slow
def test_a_sigkilled_run_is_marked_crashed_by_the_next_run(prefect_api_url, demo_files, tmp_path):
    store = tmp_path / "store"
    args = ["run", demo_files["model"], "--calib", demo_files["calib"], "--holdout", demo_files["holdout"], "--name", "demo", "--model-version", "1", "--store", str(store), "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fp16guard.cli.main", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api_url},
    )
    records = store / ".cache" / "stats" / "records"
    try:
        line = flow_run_line(proc)  # once the flow is running
        assert line.startswith("flow run: "), line
        first = line.strip().rsplit("/", 1)[-1]
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if records.is_dir() and any(records.iterdir()) and _state(first) == "RUNNING":
                break  # the server shows it RUNNING and a shard is finished (cached)
            time.sleep(0.05)
        # Mid-run: still working, a shard done, nothing published yet.
        assert proc.poll() is None and any(records.iterdir()) and not (store / "demo" / "1" / "runs").exists(), "not killed mid-run"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _state(first) == "RUNNING", "a killed run cannot end its flow run itself"

    again = run_cli(args, api_url=prefect_api_url)
    assert again.returncode == 0, again.stderr
    assert f"({first}) marked Crashed" in again.stdout
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["passed"]
    with _client() as client:
        killed = client.read_flow_run(first)
    assert killed.state.type.value == "CRASHED"
    assert "is gone" in killed.state.message


def test_a_broken_stale_lock_marks_its_dead_flow_run_crashed(prefect_api_url, tmp_path):
    from fp16guard.store.locks import LeaseLocks
    from tasks.caching import LeaseLockManager

    dead = _dead_pid()
    orphan = _flow_run("fp16guard-lock-holder", _labels(dead))
    folder = tmp_path / "locks"
    LeaseLocks(folder)._create("k1", {"holder": "h", "pid": dead, "host": socket.gethostname(), "proc_start": None,
                                      "acquired_at": time.time(), "expires_at": time.time() + 600, "what": "x", "flow_run_id": str(orphan)})
    manager = LeaseLockManager(folder)
    assert manager.acquire_lock("k1", holder="next", acquire_timeout=5)
    assert _state(orphan) == "CRASHED"
    manager.release_lock("k1", holder="next")


def test_a_dead_worker_of_a_live_flow_run_does_not_crash_it(prefect_api_url, tmp_path):
    """The lock's holder (a worker process) is gone, but the flow run's own process lives."""
    from fp16guard.store.locks import LeaseLocks
    from tasks.caching import LeaseLockManager

    live = _flow_run("fp16guard-lock-holder", _labels(os.getpid()))
    folder = tmp_path / "locks"
    LeaseLocks(folder)._create("k2", {"holder": "h", "pid": _dead_pid(), "host": socket.gethostname(), "proc_start": None,
                                      "acquired_at": time.time(), "expires_at": time.time() + 600, "what": "x", "flow_run_id": str(live)})
    manager = LeaseLockManager(folder)
    assert manager.acquire_lock("k2", holder="next", acquire_timeout=5)
    assert _state(live) == "RUNNING"
    manager.release_lock("k2", holder="next")


def test_the_sweep_marks_only_dead_processes_of_this_host(prefect_api_url):
    from tasks.orphans import FLOW_NAME, sweep_orphaned_runs

    dead = _flow_run(FLOW_NAME, _labels(_dead_pid()))
    alive = _flow_run(FLOW_NAME, _labels(os.getpid()))
    elsewhere = _flow_run(FLOW_NAME, _labels(_dead_pid(), host=f"other-{uuid.uuid4().hex[:6]}"))
    unlabelled = _flow_run(FLOW_NAME)
    marked = {run_id for run_id, _, _ in sweep_orphaned_runs()}
    assert str(dead) in marked
    assert not {str(alive), str(elsewhere), str(unlabelled)} & marked
    assert [_state(r) for r in (dead, alive, elsewhere, unlabelled)] == ["CRASHED", "RUNNING", "RUNNING", "RUNNING"]


def test_a_lock_record_names_the_flow_run_that_took_it(prefect_api_url, tmp_path):
    from prefect import flow

    from tasks.caching import LeaseLockManager

    manager = LeaseLockManager(tmp_path / "locks")

    @flow(name="fp16guard-lock-taker")
    def take() -> str:
        from prefect.runtime import flow_run

        manager.acquire_lock("k3", holder="me")
        record = manager.locks.read("k3")
        manager.release_lock("k3", holder="me")
        assert record["flow_run_id"] == flow_run.get_id()
        return record["flow_run_id"]

    assert take()


def test_the_next_run_sweeps_stale_locks_no_key_asks_for_again(prefect_api_url, tmp_path):
    """A killed run's lock on a key no later run needs (a shard group formed differently) is
    broken at the start of the next run, and tells on its dead flow run; a live holder's stays."""
    from fp16guard.store.locks import LeaseLocks
    from tasks.caching import lock_dir_for
    from tasks.orphans import sweep_stale_locks

    store = tmp_path / "store"
    dead = _dead_pid()
    orphan = _flow_run("fp16guard-lock-holder", _labels(dead))
    folder = lock_dir_for(str(store)) / "stats"
    now = time.time()
    base = {"holder": "h", "host": socket.gethostname(), "proc_start": None, "acquired_at": now, "expires_at": now + 600, "what": "x"}
    LeaseLocks(folder)._create("group-old", {**base, "pid": dead, "flow_run_id": str(orphan)})
    LeaseLocks(folder)._create("live", {**base, "pid": os.getpid()})
    removed = sweep_stale_locks(str(store))
    assert [Path(p).name for p, _ in removed] == ["group-old.lock"] and "is gone" in removed[0][1]
    assert sorted(p.name for p in folder.glob("*.lock")) == ["live.lock"]
    assert _state(orphan) == "CRASHED"
