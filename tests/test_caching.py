"""The task cache: it never runs code, it refuses tampered entries, dead holders' locks do not
block it, and its keys see every module a result depends on."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fp16guard.settings import RunParameters


class _CreatesFile:
    """Unpickling this creates a file: the proof that a cache read ran code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_tampered_cache_is_not_executed_and_dead_locks_do_not_block(prefect_api_url, demo_files, tmp_path, monkeypatch):
    import flows.calibrate
    from flows.calibrate import calibrate
    from tasks.caching import DIGEST_FIELD, code_digest, task_code_digest

    # Other work may edit library modules between the two runs (a shared checkout); pin the code
    # part of the key so that only what this test does to the cache decides hits and misses.
    digests = {}
    monkeypatch.setattr(flows.calibrate, "code_digest", lambda *m: digests.setdefault(m, code_digest(*m)))
    monkeypatch.setattr(flows.calibrate, "task_code_digest", lambda *m: digests.setdefault(m, task_code_digest(*m)))

    store = tmp_path / "store"
    params = RunParameters(model=demo_files["model"], calib=[demo_files["calib"]], holdout=[demo_files["holdout"]], name="demo", version="1", store=str(store))
    first = calibrate(params)
    first_run = json.loads((Path(first["run_dir"]) / "manifest.json").read_text())["flow_run"]["id"]
    cache = store / ".cache" / "stats"
    records = sorted((cache / "records").iterdir())
    assert len(records) == 4
    meta = [json.loads(r.read_text()) for r in records]
    assert all(m["serializer"] == {"type": "fp16guard-json"} and len(m[DIGEST_FIELD]) == 64 for m in meta)
    payloads = [cache / "results" / m["storage_key"] for m in meta]
    assert all(p.read_bytes().startswith(b"{") for p in payloads), "payloads are JSON, not pickles"

    marker = tmp_path / "code-ran"
    evil = pickle.dumps(_CreatesFile(str(marker)))
    # Entry 0: payload replaced by a pickle (digest now differs).
    payloads[0].write_bytes(evil)
    # Entry 1: payload *and* record rewritten consistently, naming the pickle serializer.
    payloads[1].write_bytes(evil)
    import hashlib

    records[1].write_text(json.dumps({**meta[1], "serializer": {"type": "pickle", "picklelib": "pickle"}, DIGEST_FIELD: hashlib.sha256(evil).hexdigest()}))
    # Entry 2: no cache entry, and a lock left by a process that is gone (a killed run).
    records[2].unlink()
    locks = store / ".cache" / "locks" / "stats"
    (locks / f"{records[2].name}.lock").write_text(
        json.dumps({"holder": "killed", "pid": _dead_pid(), "host": os.uname().nodename, "acquired_at": time.time(), "expires_at": time.time() + 3600})
    )

    start = time.monotonic()
    second = calibrate(params)
    assert time.monotonic() - start < 120, "the dead holder's lock must not be waited on"
    assert second["passed"]
    assert not marker.exists(), "a cache read ran code"
    second_run = json.loads((Path(second["run_dir"]) / "manifest.json").read_text())["flow_run"]["id"]
    by_shard = {c["sha256"]: c["computed_by"] for c in json.loads((Path(second["run_dir"]) / "manifest.json").read_text())["inputs"]["calibration"]}
    assert sorted(by_shard.values()).count(second_run) == 3, "the three broken entries are recomputed"
    assert sorted(by_shard.values()).count(first_run) == 1, "the sound entry is reused"
    # The recomputed entries are sound again, and no lock is left behind.
    assert all(json.loads(r.read_text())["serializer"] == {"type": "fp16guard-json"} for r in (cache / "records").iterdir())
    assert not list(locks.glob("*.lock"))


def test_serializer_round_trips_data_and_refuses_objects():
    import numpy as np
    import pyarrow as pa
    from prefect.exceptions import SerializationError

    from tasks.caching import SafeSerializer

    s = SafeSerializer()
    value = {"table": pa.table({"x": [1.0, 2.5], "name": ["a", "b"]}), "nan": float("nan"), "worst": float("inf"), "n": np.int64(3), "ok": True, "list": (1, "a")}
    back = s.loads(s.dumps(value))
    assert back["nan"] != back["nan"] and back["table"].equals(value["table"]) and back["worst"] == float("inf") and back["n"] == 3 and back["list"] == [1, "a"]
    with pytest.raises(SerializationError):
        s.dumps({"f": _CreatesFile("/nonexistent")})
    with pytest.raises(ValueError):
        s.loads(pickle.dumps({"a": 1}))


def test_code_digest_follows_lazy_imports_into_dependencies(tmp_path, monkeypatch):
    from tasks import caching

    pkg = tmp_path / "fp16guard_digest_probe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from .sub import helper  # lazy, relative\n    return helper.g()\n")
    (pkg / "sub" / "helper.py").write_text("from fp16guard_digest_probe.sub.deep import h\n\ndef g():\n    return h()\n")
    (pkg / "sub" / "deep.py").write_text("def h():\n    return 1\n")
    (pkg / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    caching._find.cache_clear()

    closure = caching.import_closure("fp16guard_digest_probe.top", package="fp16guard_digest_probe")
    assert {"fp16guard_digest_probe.sub.helper", "fp16guard_digest_probe.sub.deep"} <= closure
    assert "fp16guard_digest_probe.unrelated" not in closure
    before = caching.code_digest("fp16guard_digest_probe.top", package="fp16guard_digest_probe")
    (pkg / "unrelated.py").write_text("X = 2\n")
    assert caching.code_digest("fp16guard_digest_probe.top", package="fp16guard_digest_probe") == before
    (pkg / "sub" / "deep.py").write_text("def h():\n    return 2\n")  # two imports away
    assert caching.code_digest("fp16guard_digest_probe.top", package="fp16guard_digest_probe") != before


def test_flow_cache_keys_cover_graph_runner_and_io():
    # Issue 11: the old hand-written lists left these out.
    from tasks.caching import import_closure, task_closure
    from tasks.stats import STATS_MODULES

    stats, verify = import_closure(*STATS_MODULES), task_closure("tasks.verify", "onnxruntime")
    assert {"fp16guard.runners.onnxrt", "fp16guard.graph.info", "fp16guard.io.model"} <= stats
    assert {"fp16guard.runners.onnxrt", "fp16guard.graph.emulate", "fp16guard.io.model", "fp16guard.verify.compare"} <= verify


# Issue 20: the registry imports backends by string, so the hand-kept VERIFY_MODULES missed these.
_BACKEND_MODULES = [
    ("tensorrt", "fp16guard.backends.tensorrt.verify"),
    ("tensorrt", "fp16guard.backends.tensorrt.backend"),
    ("tensorrt", "fp16guard.runners.tensorrt"),
    ("tensorrt", "fp16guard.backends.tensorrt.env"),
    ("onnxruntime", "fp16guard.backends.onnxruntime"),
    ("onnxruntime", "fp16guard.graph.emulate"),
    ("onnxruntime", "fp16guard.graph.ort_fusions"),
]


@pytest.mark.parametrize("backend,module", _BACKEND_MODULES, ids=[f"{b}:{m.rsplit('.', 2)[-2]}.{m.rsplit('.', 1)[-1]}" for b, m in _BACKEND_MODULES])
def test_verify_key_changes_when_a_backend_module_is_edited(backend, module, monkeypatch):
    """The flow's verification key, as the flow computes it, changes when the source of a module
    the run's backend can import changes (the edit is made to the source the key reads)."""
    import flows.calibrate as flow
    from tasks import caching

    before = flow.verify_code(backend)
    assert flow.verify_code(backend) == before, "the key is not deterministic"
    real = caching._source
    monkeypatch.setattr(caching, "_source", lambda name: real(name) + (b"\n# edited\n" if name == module else b""))
    assert flow.verify_code(backend) != before, f"editing {module} does not change the {backend} verification key"


def test_verify_key_follows_every_module_of_the_backend_package():
    """Every module of each built-in backend's package (the folder the registry names) is in the
    closure of that backend's verification key, and the other backend's private modules are not."""
    from fp16guard.backends.registry import backend_module, backend_names
    from tasks.caching import task_closure

    trt = task_closure("tasks.verify", "tensorrt")
    for name in ("backend", "build", "choose", "env", "errors", "inspector", "mapping", "profiles", "verify"):
        assert f"fp16guard.backends.tensorrt.{name}" in trt
    assert "fp16guard.runners.tensorrt" in trt
    assert "fp16guard.backends.tensorrt.verify" not in task_closure("tasks.verify", "onnxruntime")
    for name in backend_names():
        assert backend_module(name) in task_closure("tasks.verify", name)


def test_registered_backend_from_another_package_is_in_the_key(tmp_path, monkeypatch):
    """A backend registered at run time from outside fp16guard: its package's source keys the cache."""
    from fp16guard.backends import registry
    from tasks import caching

    pkg = tmp_path / "fp16guard_probe_backend"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "impl.py").write_text("from fp16guard_probe_backend import helper\n\ndef make_backend(providers):\n    return helper\n")
    (pkg / "helper.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fp16guard_probe_backend.impl as impl

    monkeypatch.setitem(registry._REGISTERED, "probe", (impl.make_backend, "probe"))
    closure = caching.task_closure("tasks.verify", "probe")
    assert {"fp16guard_probe_backend.impl", "fp16guard_probe_backend.helper", "fp16guard.backends.registry"} <= closure
    before = caching.task_code_digest("tasks.verify", "probe")
    (pkg / "helper.py").write_text("X = 2\n")
    assert caching.task_code_digest("tasks.verify", "probe") != before
