"""Lease locks kept in an S3 store (fp16guard.store.remote_locks), against a real moto server.

Hosts are simulated by processes (or lock objects) with different host ids
(``FP16GUARD_HOST_ID``): a holder on "another host" cannot be checked by pid, so only its lease
decides. A hung holder is a child process stopped with SIGSTOP (it stops renewing, as a dead or
cut-off host does) and resumed with SIGCONT (its renewer then runs late).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fixtures_s3 import s3_root, s3_server  # noqa: F401
from fp16guard.store.conditional import S3Objects
from fp16guard.store.fs import StoreIOError, open_fs
from fp16guard.store.lease import LockTimeout
from fp16guard.store.remote_locks import RemoteLeaseLocks

REPO = Path(__file__).resolve().parents[1]
PREFIX = ".cache/locks/test"

_HOLD = """
import sys, time
from fp16guard.store.fs import open_fs
from fp16guard.store.remote_locks import RemoteLeaseLocks
locks = RemoteLeaseLocks(open_fs(sys.argv[1]), sys.argv[2], lease_s=float(sys.argv[4]), report=lambda m: print(m, flush=True))
locks.acquire(sys.argv[3], "child", what="test shard")
print("held", flush=True)
time.sleep(600)
"""


def _locks(root: str, host: str, **kw) -> RemoteLeaseLocks:
    kw.setdefault("report", lambda m: None)
    return RemoteLeaseLocks(open_fs(root), PREFIX, host=host, **kw)


def _record(root: str, key: str) -> dict | None:
    got = S3Objects(open_fs(root)).get(f"{PREFIX}/{key}.lock")
    return None if got is None else json.loads(got[0])


def _hold_in_child(root: str, key: str, lease_s: float, host: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, root, PREFIX, key, str(lease_s)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO), "FP16GUARD_HOST_ID": host},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    return out


def test_create_is_exclusive_across_hosts(s3_root):
    a, b = _locks(s3_root, "host-a"), _locks(s3_root, "host-b")
    assert a.acquire("k", "holder-a", what="shard s0")
    record = _record(s3_root, "k")
    assert record["host"] == "host-a" and record["holder"] == "holder-a" and record["expires_at"] > time.time()
    assert a.acquire("k", "holder-a", timeout=0)  # re-entrant for its holder
    assert b.acquire("k", "holder-b", timeout=0.3) is False
    assert b.is_locked("k") and not b.is_holder("k", "holder-b") and a.is_holder("k", "holder-a")
    with pytest.raises(ValueError):
        b.release("k", "holder-b")
    a.release("k", "holder-a")
    assert _record(s3_root, "k") is None and not b.is_locked("k")
    assert b.acquire("k", "holder-b", timeout=0)
    b.release("k", "holder-b")


def test_simultaneous_takers_get_it_once(s3_root):
    # Eight "hosts" try to create one lock in the same instant: the conditional PUT lets one win.
    barrier = threading.Barrier(8)
    won: list[str] = []

    def take(i: int) -> None:
        locks = _locks(s3_root, f"host-{i}")
        barrier.wait()
        if locks.acquire("race", f"h{i}", timeout=0):
            won.append(f"h{i}")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and _record(s3_root, "race")["holder"] == won[0]


def test_stale_record_is_taken_by_exactly_one_breaker(s3_root):
    # A record whose lease expired (its host died): every waiter sees it stale at once, and only
    # one of them may take it; the others must not remove the winner's lock.
    stale = {"holder": "dead", "pid": 1, "host": "gone-host", "acquired_at": time.time() - 500, "expires_at": time.time() - 10, "nonce": "x"}
    assert S3Objects(open_fs(s3_root)).create(f"{PREFIX}/s.lock", json.dumps(stale).encode())
    barrier = threading.Barrier(6)
    won, messages = [], []

    def take(i: int) -> None:
        locks = _locks(s3_root, f"host-{i}", report=messages.append)
        barrier.wait()
        if locks.acquire("s", f"h{i}", timeout=0):
            won.append(f"h{i}")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, won
    assert _record(s3_root, "s")["holder"] == won[0]
    assert [m for m in messages if "took over" in m and "lease expired" in m and "gone-host" in m]


def test_breaker_with_an_old_read_does_not_remove_the_new_holder(s3_root):
    # The interleaving the threads above may or may not hit, forced: both breakers read the stale
    # record (same ETag) before either writes; the second write must fail on that ETag.
    stale = {"holder": "dead", "pid": 1, "host": "gone-host", "acquired_at": time.time() - 500, "expires_at": time.time() - 10, "nonce": "y"}
    assert S3Objects(open_fs(s3_root)).create(f"{PREFIX}/t.lock", json.dumps(stale).encode())
    a, b = _locks(s3_root, "host-a"), _locks(s3_root, "host-b")
    (rec_a, etag_a), (rec_b, etag_b) = a._read("t"), b._read("t")
    assert etag_a == etag_b and a.stale_reason(rec_a) and b.stale_reason(rec_b)
    taken_a, _ = a._take_stale("t", rec_a, etag_a, a._new_record("holder-a", ""), "expired")
    taken_b, _ = b._take_stale("t", rec_b, etag_b, b._new_record("holder-b", ""), "expired")
    assert (taken_a, taken_b) == (True, False)
    assert _record(s3_root, "t")["holder"] == "holder-a"
    assert b.acquire("t", "holder-b", timeout=0) is False  # a live holder now


def test_damaged_record_is_taken_over(s3_root):
    assert S3Objects(open_fs(s3_root)).create(f"{PREFIX}/d.lock", b'{"holder": "x", "pid"')
    messages: list[str] = []
    assert _locks(s3_root, "host-b", report=messages.append).acquire("d", "me", timeout=0)
    assert any("damaged" in m for m in messages)


def test_bounded_wait_reports_and_times_out(s3_root):
    a = _locks(s3_root, "host-a")
    assert a.acquire("w", "holder-a", what="stats shard s3")
    messages: list[str] = []
    b = _locks(s3_root, "host-b", wait_s=1.0, report_s=0.3, poll_s=0.05, report=messages.append)
    start = time.monotonic()
    with pytest.raises(LockTimeout, match=rf"pid {os.getpid()} on host-a .*\(stats shard s3\), which is still running.*FP16GUARD_LOCK_WAIT_S") as info:
        b.acquire("w", "holder-b")
    assert 1.0 <= time.monotonic() - start < 5.0
    assert "\n" not in str(info.value) and info.value.exit_code == 3
    waiting = [m for m in messages if m.startswith(f"fp16guard: waiting for pid {os.getpid()} on host-a") and "s3://" in m]
    assert len(waiting) >= 2, messages
    assert b.wait("w", timeout=0.3) is False
    a.release("w", "holder-a")
    assert b.wait("w", timeout=1.0) is True


def test_live_holder_on_another_host_renews_then_its_lease_ends_when_it_dies(s3_root):
    child = _hold_in_child(s3_root, "k", lease_s=1.0, host="host-a")
    try:
        first = _record(s3_root, "k")
        assert first["pid"] == child.pid and first["host"] == "host-a"
        b = _locks(s3_root, "host-b")
        # Longer than the lease: only renewal keeps it.
        assert b.acquire("k", "holder-b", timeout=1.6) is False
        assert _record(s3_root, "k")["expires_at"] > first["expires_at"]
    finally:
        _kill(child)
    # Another host cannot see that pid: the lease decides, so it is taken once the lease ends.
    messages: list[str] = []
    b = _locks(s3_root, "host-b", report=messages.append)
    start = time.monotonic()
    assert b.acquire("k", "holder-b", timeout=5.0)
    assert time.monotonic() - start < 2.5
    assert any("took over" in m and "lease expired" in m for m in messages)
    assert _record(s3_root, "k")["host"] == "host-b"


def test_dead_holder_on_the_same_host_is_replaced_at_once(s3_root):
    child = _hold_in_child(s3_root, "k", lease_s=120.0, host="host-a")
    _kill(child)
    messages: list[str] = []
    start = time.monotonic()
    assert _locks(s3_root, "host-a", report=messages.append).acquire("k", "me", timeout=0)
    assert time.monotonic() - start < 1.0
    assert any(f"pid {child.pid} on host-a) is gone" in m for m in messages)


@pytest.mark.parametrize("successor_keeps_it", [True, False], ids=["taken", "taken-and-released"])
def test_late_renewer_does_not_resurrect_a_broken_lock(s3_root, successor_keeps_it):
    child = _hold_in_child(s3_root, "k", lease_s=0.8, host="host-a")
    try:
        child.send_signal(signal.SIGSTOP)  # hung: it stops renewing, its lease runs out
        b = _locks(s3_root, "host-b")
        assert b.acquire("k", "holder-b", timeout=5.0)
        taken = _record(s3_root, "k")
        assert taken["holder"] == "holder-b"
        if not successor_keeps_it:
            b.release("k", "holder-b")
        child.send_signal(signal.SIGCONT)  # its renewer wakes up late, several times
        time.sleep(1.2)
        after = _record(s3_root, "k")
        if successor_keeps_it:
            assert after is not None and after["holder"] == "holder-b" and after["host"] == "host-b"
        else:
            assert after is None
    finally:
        out = _kill(child)
    assert "lost the lock" in out and "lease lapsed" in out


def test_missing_bucket_is_one_line_environment_error(s3_server):
    locks = RemoteLeaseLocks(open_fs("s3://fp16guard-no-such-bucket/store"), PREFIX, report=lambda m: None)
    with pytest.raises(StoreIOError, match=r"cannot create s3://fp16guard-no-such-bucket/store/\.cache/locks/test/k\.lock") as info:
        locks.acquire("k", "me", timeout=0)
    assert "\n" not in str(info.value) and info.value.exit_code == 3


def test_only_s3_stores_get_remote_locks(tmp_path):
    with pytest.raises(ValueError, match="s3://"):
        RemoteLeaseLocks(open_fs(str(tmp_path)), PREFIX)


# --------------------------------------------------------------------------- two hosts, one store
_RUN = """
import json, os, sys, time
from pathlib import Path
from flows.calibrate import calibrate
from fp16guard.settings import RunParameters
sync, host, root, model, calib, holdout = sys.argv[1:7]
(Path(sync) / f"ready-{host}").touch()
while not (Path(sync) / "go").exists():  # start the flows together: imports take seconds
    time.sleep(0.01)
result = calibrate(RunParameters(model=model, calib=[calib], holdout=[holdout], name="race", version="1", store=root))
print("RESULT " + json.dumps({k: result[k] for k in ("run_id", "passed", "released")}), flush=True)
"""


@pytest.mark.slow
def test_two_hosts_racing_on_one_s3_store_compute_each_shard_once_and_release_once(prefect_api_url, demo_files, s3_root, tmp_path):
    """Two processes with different host ids (and homes: no local file in common), the same
    model, shards and version, one S3 store and one Prefect server, started in the same instant.

    Evidence of "computed once" is what the runs stored: each shard's statistics record the flow
    run that computed them (``computed_by``, written by the statistics task), and a run that read
    the cache carries the other run's id. Shards of 512 samples take ~0.4 s each here, so the two
    runs' statistics passes overlap for seconds: without locks across hosts both compute them.
    """
    from fp16guard import examples
    from fp16guard.store.runs import Store

    calib = tmp_path / "calib"
    examples.write_shards("demo", calib, 8, 512, seed=11)
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = {}
    for host in ("host-a", "host-b"):
        home = tmp_path / host
        home.mkdir()
        env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api_url, "FP16GUARD_HOST_ID": host, "HOME": str(home), "PREFECT_HOME": str(home / ".prefect")}
        procs[host] = subprocess.Popen(
            [sys.executable, "-c", _RUN, str(sync), host, s3_root, demo_files["model"], str(calib), demo_files["holdout"]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
        )
    deadline = time.monotonic() + 120
    while not all((sync / f"ready-{h}").exists() for h in procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), {h: p.communicate()[1][-2000:] for h, p in procs.items() if p.poll() is not None}
        time.sleep(0.05)
    (sync / "go").touch()
    outs = {h: p.communicate(timeout=600) for h, p in procs.items()}
    assert {h: p.returncode for h, p in procs.items()} == {"host-a": 0, "host-b": 0}, {h: o[1][-3000:] for h, o in outs.items()}
    results = {h: json.loads(next(l for l in o[0].splitlines() if l.startswith("RESULT "))[7:]) for h, o in outs.items()}

    store = Store(s3_root)
    run_ids = {h: r["run_id"] for h, r in results.items()}
    assert sorted(store.runs("race", "1")) == sorted(run_ids.values())  # both runs stored
    manifests = {h: store.read_json("race", "1", run_ids[h], "manifest.json") for h in run_ids}
    flow_runs = {h: m["flow_run"]["id"] for h, m in manifests.items()}
    by_shard = {h: {c["shard"]: c["computed_by"] for c in m["inputs"]["calibration"]} for h, m in manifests.items()}
    assert len(by_shard["host-a"]) == 8 and set(by_shard["host-a"]) == set(by_shard["host-b"])
    # Each shard was measured by one run, and the other run read that result from the store.
    assert by_shard["host-a"] == by_shard["host-b"], by_shard
    assert set(by_shard["host-a"].values()) <= set(flow_runs.values())

    # Released exactly once: one release record for the version, naming the run that says so.
    records = store.fs.listdir("race/1/releases")
    assert len(records) == 1, records
    release = json.loads(store.fs.read_bytes(f"race/1/releases/{records[0]}"))
    assert sorted(r["released"] for r in results.values()) == [False, True]
    assert release["run_id"] == next(r["run_id"] for r in results.values() if r["released"])
    assert all(r["passed"] for r in results.values())
    # Whether the two statistics passes met on a lock depends on timing (since the statistics
    # got faster, one host usually finishes its pass before the other starts it, and then reads
    # every shard from the store). The lock race itself is proven deterministically above
    # (8 simultaneous takers, 6 breakers, a late renewer); here: no lock is left behind.
    assert store.fs.listdir(".cache/locks/stats") == []


def test_a_lock_object_inherited_by_a_forked_child_is_not_renewed_there(s3_root):
    # What a forked worker sees: a held entry whose record names another pid (its parent).
    # Renewing it there would keep a dead parent's lock alive for as long as the child lives.
    locks = _locks(s3_root, "host-a", lease_s=600)
    assert locks.acquire("f", "parent")
    before = S3Objects(open_fs(s3_root)).get(f"{PREFIX}/f.lock")
    with locks._mutex:
        locks._held["f"][2] = {**locks._held["f"][2], "pid": os.getpid() + 1}
    locks.renew()
    assert "f" not in locks._held
    assert S3Objects(open_fs(s3_root)).get(f"{PREFIX}/f.lock") == before  # untouched


def test_cache_locks_of_an_s3_store_live_in_the_store(s3_root, tmp_path):
    from fp16guard.store.locks import LeaseLocks
    from tasks.caching import lock_dir_for, lock_manager_for

    manager = lock_manager_for(s3_root, "stats", what="stats cache entry")
    assert isinstance(manager.locks, RemoteLeaseLocks) and manager.where == f"{s3_root}/.cache/locks/stats"
    assert manager.acquire_lock("k1", "h")
    got = S3Objects(open_fs(s3_root)).get(".cache/locks/stats/k1.lock")
    assert got is not None and json.loads(got[0])["what"] == "stats cache entry"
    assert manager == lock_manager_for(s3_root, "stats") and manager != lock_manager_for(s3_root, "verify")
    manager.release_lock("k1", "h")
    assert S3Objects(open_fs(s3_root)).get(".cache/locks/stats/k1.lock") is None
    # A local store keeps lock files in the store; other fsspec stores, per host.
    local = lock_manager_for(str(tmp_path / "store"), "stats")
    assert isinstance(local.locks, LeaseLocks) and local.locks.folder == tmp_path / "store" / ".cache" / "locks" / "stats"
    memory = lock_manager_for("memory://fp16guard-test/store", "stats")
    assert isinstance(memory.locks, LeaseLocks) and memory.locks.folder == lock_dir_for("memory://fp16guard-test/store") / "stats"
