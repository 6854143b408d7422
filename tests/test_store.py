"""The versioned store on a local folder and on a real S3-compatible server (moto, loopback)."""

from __future__ import annotations

import os

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from fixtures_s3 import commit_run, race_worker, s3_root, s3_server, write_run_files  # noqa: F401 (pytest fixtures)
from fp16guard.errors import StoreError
from fp16guard.store.audit import history, verify_run
from fp16guard.store.runs import DEFAULT_STORE, Store, resolve_root


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(tmp_path / "store")
    return Store(request.getfixturevalue("s3_root"))


def test_resolve_root(monkeypatch):
    monkeypatch.delenv("FP16GUARD_STORE", raising=False)
    assert resolve_root(None) == DEFAULT_STORE
    monkeypatch.setenv("FP16GUARD_STORE", "/x/y")
    assert resolve_root(None) == "/x/y"
    assert resolve_root("s3://b/p") == "s3://b/p"


def test_commit_release_and_read_back(store):
    run = commit_run(store, "resnet", "7", "r1")
    assert run.status == "verified"
    assert store.runs("resnet", "7") == ["r1"]
    assert store.current_release("resnet", "7") is None  # committing does not release
    decision = store.release("resnet", "7", "r1")
    assert decision.released and decision.previous_run_id is None
    assert store.current_release("resnet", "7")["run_id"] == "r1"
    assert json.loads(store.fs.read_bytes("resnet/7/release.json"))["run_id"] == "r1"
    assert store.read_json("resnet", "7", "r1", "plan.json")["counts"]["fp32"] == 2
    assert store.read_bytes("resnet", "7", "r1", "model.mixed.onnx") == b"onnx-bytes"
    assert verify_run(store, "resnet", "7") == []


def test_second_run_needs_promote_and_history_keeps_both(store):
    commit_run(store, "m", "1", "a")
    assert store.release("m", "1", "a").released
    commit_run(store, "m", "1", "b", rel_error=0.005)
    second = store.release("m", "1", "b")
    assert not second.released and second.current_run_id == "a" and "promote" in second.reason
    assert store.current_release("m", "1")["run_id"] == "a"
    promoted = store.release("m", "1", "b", promote=True)
    assert promoted.released and promoted.previous_run_id == "a"
    assert [r["run_id"] for r in store.release_history("m", "1")] == ["a", "b"]
    rows = {r["run_id"]: r for r in history(store, "m")}
    assert rows["b"]["released"] == "current" and rows["a"]["released"] == "previous"
    assert rows["b"]["worst_rel_error"] == pytest.approx(0.005)
    assert rows["a"]["fp32_nodes"] == 2 and rows["a"]["trigger"] == "manual" and rows["a"]["status"] == "verified"


def test_rejected_run_is_kept_but_cannot_be_released(store):
    commit_run(store, "m", "1", "bad", passed=False)
    assert store.runs("m", "1") == ["bad"]
    assert store.run_status("m", "1", "bad")["status"] == "rejected"
    with pytest.raises(StoreError, match="only a verified run"):
        store.release("m", "1", "bad")
    assert store.current_release("m", "1") is None
    (row,) = history(store, "m", "1")
    assert row["status"] == "rejected" and row["released"] == ""


def test_bad_input_leaves_nothing(store):
    with pytest.raises(ValueError):
        with store.stage_run("m", "1", "x") as staged:
            (staged.path / "plan.json").write_text("{}")
            raise ValueError("calibration shard has no input 'x'")
    assert not staged.path.exists()
    assert store.runs("m", "1") == []
    assert store.fs.files_under("m/1/runs") == []


def test_half_written_run_is_invisible(tmp_path):
    store = Store(tmp_path)
    staged = store.stage_run("m", "1", "half")
    (staged.path / "model.mixed.onnx").write_bytes(b"partial")
    assert store.runs("m", "1") == [] and not (tmp_path / "m/1/runs/half").exists()
    staged.commit(verified=True)
    assert store.runs("m", "1") == ["half"]


def test_run_ids_are_never_overwritten(store):
    commit_run(store, "m", "1", "r1")
    store.release("m", "1", "r1")
    with pytest.raises(StoreError, match="already exists"):
        store.stage_run("m", "1", "r1")
    staged = store.stage_run("m", "1", "r2")
    write_run_files(staged.path)
    commit_run(store, "m", "1", "r2")  # someone else takes the id meanwhile
    with pytest.raises(StoreError, match="already exists"):
        staged.commit(verified=True)
    done = commit_run(store, "m", "1", "r3")
    assert done.run_id == "r3"
    with store.stage_run("m", "1", "r4") as again:
        again.commit(verified=True)
        with pytest.raises(StoreError, match="already committed"):
            again.commit(verified=False)
    assert store.run_status("m", "1", "r4")["status"] == "verified"
    assert verify_run(store, "m", "1", "r1") == []


def test_exclusive_create_is_atomic(store):
    assert store.fs.create_exclusive("m/x.json", b"1")
    assert not store.fs.create_exclusive("m/x.json", b"2")
    assert store.fs.read_bytes("m/x.json") == b"1"


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", ".hidden", "x" * 200])
def test_names_cannot_escape(tmp_path, bad):
    store = Store(tmp_path / "s")
    with pytest.raises(StoreError):
        store.stage_run(bad, "1")
    with pytest.raises(StoreError):
        store.stage_run("m", bad)
    with pytest.raises(StoreError):
        store.read_bytes("m", "1", "r", "../../etc/passwd")
    assert not any(p for p in tmp_path.rglob("*") if "s" not in p.relative_to(tmp_path).parts[:1])


def test_verify_detects_tampering(store):
    commit_run(store, "m", "1", "r1")
    store.release("m", "1", "r1")
    store.fs.write_bytes("m/1/runs/r1/model.mixed.onnx", b"evil")  # bypasses the API on purpose
    store.fs.write_bytes("m/1/runs/r1/extra.bin", b"?")
    problems = verify_run(store, "m", "1")
    assert any(p.startswith("model.mixed.onnx: sha256") and "status.json" in p for p in problems)
    assert any(p.startswith("model.mixed.onnx: sha256") and "manifest.json outputs" in p for p in problems)
    assert any(p.startswith("extra.bin") for p in problems)


def _tiny_model(path: Path, scale: float = 2.0) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((1,), scale, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"], name="mul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [w],
    )
    onnx.save(helper.make_model(graph), str(path))


def test_verify_reports_missing_output_and_checks_inputs(tmp_path):
    from fp16guard.io.shards import ShardRef, shard_digest
    from fp16guard.io.model import model_digest

    store = Store(tmp_path / "s")
    model, feeds = tmp_path / "model.onnx", tmp_path / "feeds.json"
    _tiny_model(model)
    import numpy as np
    from polygraphy.json import save_json

    save_json([{"x": np.ones((1,), np.float32)}, {"x": np.zeros((1,), np.float32)}], str(feeds))  # two shards
    shard = {"location": f"{feeds}#1", "sha256": shard_digest(ShardRef(name="f", path=str(feeds), index=1))}
    with store.stage_run("m", "1", "r") as staged:
        write_run_files(staged.path)
        manifest = json.loads((staged.path / "manifest.json").read_text())
        manifest["outputs"]["report.html"] = {"sha256": "0" * 64, "bytes": 1}
        manifest["inputs"] = {
            "model": {"location": str(model), "sha256": model_digest(model)},
            "calibration": [shard, {"location": str(tmp_path / "gone.npz"), "sha256": "1" * 64}],
        }
        (staged.path / "manifest.json").write_text(json.dumps(manifest))
        staged.commit(verified=True)
    problems = verify_run(store, "m", "1", "r")
    assert problems == ["report.html: listed in manifest.json outputs but missing from the run"]
    problems = verify_run(store, "m", "1", "r", check_inputs=True)
    assert len(problems) == 2 and "gone.npz" in problems[1], problems
    _tiny_model(model, scale=3.0)
    assert any("model.onnx: sha256" in p for p in verify_run(store, "m", "1", "r", check_inputs=True))


def test_verify_without_release_asks_for_run(store):
    commit_run(store, "m", "1", "r", passed=False)
    with pytest.raises(StoreError, match="no release"):
        verify_run(store, "m", "1")


def test_history_unknown_name(tmp_path):
    with pytest.raises(StoreError, match="no model named"):
        history(Store(tmp_path), "nope")


def test_put_run_copies_a_folder(tmp_path):
    src = tmp_path / "out"
    src.mkdir()
    write_run_files(src)
    store = Store(f"file://{tmp_path / 's'}")
    run = store.put_run("m", "1", src, verified=True)
    assert run.status == "verified" and (src / "manifest.json").exists()
    assert verify_run(store, "m", "1", run.run_id) == []


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_two_processes_racing_one_version(kind, tmp_path, request):
    root = str(tmp_path / "store") if kind == "local" else request.getfixturevalue("s3_root")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=race_worker, args=(root, "m", "1", rid, barrier, results)) for rid in ("p1", "p2")]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    store = Store(root)
    assert sorted(store.runs("m", "1")) == ["p1", "p2"]
    assert sorted(outcome.values()) == [False, True]  # exactly one release
    (record,) = store.release_history("m", "1")
    assert outcome[record["run_id"]] is True
    assert json.loads(store.fs.read_bytes("m/1/release.json"))["run_id"] == record["run_id"]
    for rid in ("p1", "p2"):
        assert verify_run(store, "m", "1", rid) == []
        assert store.read_bytes("m", "1", rid, "model.mixed.onnx") == rid.encode() * 1000


def test_staging_folders_of_dead_processes_are_swept(tmp_path):
    import json
    import subprocess
    import sys
    import time

    from fp16guard.store.fs import OWNER_FILE, STALE_STAGING_S

    store = Store(str(tmp_path / "store"))
    dead = store.stage_run("m", "1")
    (dead.path / "half.bin").write_bytes(b"x")
    owner = json.loads((dead.path / OWNER_FILE).read_text())
    assert owner["pid"] == os.getpid()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a real process that is gone: its staging folder is abandoned
    (dead.path / OWNER_FILE).write_text(json.dumps({**owner, "pid": proc.pid, "proc_start": None}))
    legacy = store.stage_run("m", "1")  # no owner record (older version): the age rule applies
    (legacy.path / OWNER_FILE).unlink()
    old = time.time() - STALE_STAGING_S - 60
    os.utime(legacy.path, (old, old))
    live = store.stage_run("m", "1")
    fresh = store.stage_run("m", "1")
    assert not dead.path.exists() and not legacy.path.exists()
    assert live.path.exists() and fresh.path.exists()


def test_run_folders_are_readable_per_umask(tmp_path):
    import stat

    store = Store(str(tmp_path / "store"))
    old = os.umask(0o022)
    try:
        ref = commit_run(store, "m", "1", "r")
        store.release("m", "1", "r")
    finally:
        os.umask(old)
    run = Path(ref.url)
    assert stat.S_IMODE(run.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in run.iterdir())
    assert stat.S_IMODE((tmp_path / "store" / "m" / "1" / "release.json").stat().st_mode) == 0o644
    assert not (run / ".owner.json").exists()
