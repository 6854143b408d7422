"""Shared helpers for the store tests: write a run the way the flow does (files, then manifest)."""

from __future__ import annotations

import json
from pathlib import Path

from fp16guard.io.hashing import sha256_file


def write_run_files(folder: Path, *, passed: bool = True, fp32: int = 2, rel_error: float = 0.001, trigger: str = "manual", payload: bytes = b"onnx-bytes") -> None:
    """Write a plausible set of run outputs into ``folder`` with a manifest hashing them."""
    folder = Path(folder)
    (folder / "model.mixed.onnx").write_bytes(payload)
    (folder / "plan.json").write_text(json.dumps({"threshold": 10000.0, "fp32_nodes": [{"name": f"n{i}"} for i in range(fp32)], "counts": {"fp32": fp32}}))
    (folder / "verification.json").write_text(
        json.dumps({"passed": passed, "reason": "" if passed else "y: max_rel_error 0.9 > 0.02", "outputs": {"y": {"max_rel_error": rel_error, "max_abs_error": 0.1, "cosine": 0.9999, "nonfinite": 0}}})
    )
    outputs = {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size} for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")}
    manifest = {"created": "2026-01-01T00:00:00Z", "trigger": {"type": trigger}, "outputs": outputs, "inputs": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def commit_run(store, name: str, version: str, run_id: str | None = None, *, passed: bool = True, **kw):
    """Stage, write and commit one run; returns the RunRef."""
    with store.stage_run(name, version, run_id) as staged:
        write_run_files(staged.path, passed=passed, **kw)
        return staged.commit(verified=passed, reason="" if passed else "verification failed")


# --------------------------------------------------------------------------- S3 server (moto)
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto in server mode) on loopback; yields its endpoint URL.

    Sets dummy AWS credentials in the environment for the session (moto accepts any).
    """
    pytest.importorskip("s3fs", reason="s3fs is needed for s3:// stores")
    moto_server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(moto_server):
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = _free_port()
    proc = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "FP16GUARD_S3_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", FP16GUARD_S3_ENDPOINT_URL=endpoint)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on port {port}")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_root(s3_server):
    """A fresh, empty bucket on the moto server; yields ``s3://<bucket>/store``."""
    import boto3

    bucket = "fp16guard-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/store"


def race_worker(root: str, name: str, version: str, run_id: str, barrier, results) -> None:
    """Child process of the concurrency test: write a run, wait for the other, then commit+release."""
    from fp16guard.store.runs import Store

    store = Store(root)
    with store.stage_run(name, version, run_id) as staged:
        write_run_files(staged.path, payload=run_id.encode() * 1000)
        barrier.wait(timeout=60)
        staged.commit(verified=True)
    decision = store.release(name, version, run_id)
    results.put((run_id, decision.released))
