"""Lease locks (fp16guard.store.locks): a lock cannot outlive its holder, and waits are bounded.

Real processes: a child takes a lock and is killed with SIGKILL; the next taker must get it at
once, without help.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fp16guard.errors import EnvironmentFailure
from fp16guard.store.locks import LeaseLocks, LockTimeout, process_alive

REPO = Path(__file__).resolve().parents[1]

_HOLD = """
import sys, time
from fp16guard.store.locks import LeaseLocks
locks = LeaseLocks(sys.argv[1], lease_s=float(sys.argv[3]))
locks.acquire(sys.argv[2], "child", what="test shard")
print("held", flush=True)
time.sleep(600)
"""


def _hold_in_child(folder: Path, key: str, lease_s: float = 120.0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder), key, str(lease_s)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_of_a_sigkilled_holder_is_taken_at_once(tmp_path):
    child = _hold_in_child(tmp_path, "k1")
    try:
        record = json.loads((tmp_path / "k1.lock").read_text())
        assert record["pid"] == child.pid and record["expires_at"] > time.time()
        messages: list[str] = []
        locks = LeaseLocks(tmp_path, wait_s=2, report=messages.append)
        # While the holder lives, the lock is honoured (bounded wait, a message naming it).
        with pytest.raises(LockTimeout, match=rf"pid {child.pid}"):
            locks.acquire("k1", "me")
        assert any(f"waiting for pid {child.pid}" in m and "test shard" in m for m in messages)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    messages.clear()
    start = time.monotonic()
    assert locks.acquire("k1", "me")
    assert time.monotonic() - start < 1.0
    assert any("is gone" in m for m in messages)
    assert json.loads((tmp_path / "k1.lock").read_text())["pid"] == os.getpid()
    locks.release("k1", "me")
    assert not (tmp_path / "k1.lock").exists()


def test_expired_lease_is_broken(tmp_path):
    # A holder on another host cannot be checked by pid: its lease decides.
    (tmp_path / "k.lock").write_text(json.dumps({"holder": "x", "pid": 1, "host": "elsewhere", "acquired_at": time.time() - 500, "expires_at": time.time() - 10}))
    locks = LeaseLocks(tmp_path, wait_s=1, report=lambda m: None)
    assert locks.acquire("k", "me", timeout=0)


def test_lock_without_expiry_from_an_old_writer_is_broken(tmp_path):
    # What Prefect's FileSystemLockManager wrote: no pid, no expiry.
    (tmp_path / "k.lock").write_text(json.dumps({"holder": "old", "expiration": None}))
    locks = LeaseLocks(tmp_path, wait_s=1, report=lambda m: None)
    assert locks.acquire("k", "me", timeout=0)


def test_live_holder_renews_its_lease(tmp_path):
    child = _hold_in_child(tmp_path, "k", lease_s=0.6)
    try:
        first = json.loads((tmp_path / "k.lock").read_text())["expires_at"]
        time.sleep(1.0)  # longer than the lease: only renewal keeps it valid
        locks = LeaseLocks(tmp_path, wait_s=0.3, report=lambda m: None)
        assert locks.acquire("k", "me", timeout=0.3) is False
        assert json.loads((tmp_path / "k.lock").read_text())["expires_at"] > first
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_lock_timeout_is_an_environment_failure():
    assert issubclass(LockTimeout, EnvironmentFailure) and LockTimeout.exit_code == 3


def test_process_alive_detects_a_dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not process_alive(proc.pid)
    assert process_alive(os.getpid())
