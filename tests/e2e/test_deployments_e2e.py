"""End to end: a real Prefect server and process worker run the deployments of deployments/prefect.yaml.

1. ``prefect server start`` (temporary PREFECT_HOME, SQLite, 127.0.0.1, a free port);
2. the ``fp16guard-gpu`` process pool from ``deployments/gpu-pool.json``;
3. ``prefect deploy --all --prefect-file deployments/prefect.yaml`` from the repository root;
4. ``prefect worker start --type process --limit 1`` (one flow run at a time: "one GPU");
5. ``fp16guard register`` emits the registration event → the trigger starts a run, which must
   complete and leave a verified, released artifact whose manifest names the event;
6. ``prefect deployment run fp16guard-nightly/nightly`` is started while the first run is still
   queued or running; it must complete after it (the worker limit keeps them apart) and report
   the release as re-verified.

About 1.5-2.5 minutes on 2 CPU cores. Every process started here is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "fp16guard-gpu"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # Own session: stopping it stops its children (the worker's flow-run processes) too.
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _wait(what: str, check, timeout: float, logs: list[Path], interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    tails = "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


@pytest.fixture()
def stack(tmp_path):
    """A Prefect server and a process worker, with the deployments applied; yields a context dict."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(
        PREFECT_HOME=str(home),
        PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    client_env = {**base, "PREFECT_API_URL": api}
    logs = [tmp_path / "server.log", tmp_path / "worker.log"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], base, logs[0]))

        def healthy() -> bool:
            import urllib.request

            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                assert procs[0].poll() is None, logs[0].read_text(errors="replace")[-4000:]
                return False

        _wait("the Prefect server", healthy, 120, logs)
        _prefect(["work-pool", "create", POOL, "--type", "process", "--base-job-template", "deployments/gpu-pool.json"], client_env)
        # the multi-GPU deployment's pool (no worker here: its trigger ships disabled)
        _prefect(["work-pool", "create", "fp16guard-multigpu", "--type", "process", "--base-job-template", "deployments/gpu-pool.json"], client_env)
        _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], client_env)
        store = tmp_path / "store"
        worker_env = {**client_env, "FP16GUARD_STORE": str(store), "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
        procs.append(
            _start([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1", "--name", "e2e-gpu0"], worker_env, logs[1])
        )
        yield {"api": api, "env": client_env, "store": store, "logs": logs, "tmp": tmp_path}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _flow_runs(api: str, deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))


def _artifact(api: str, key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created) if found else None  # the newest version of the key


def test_registration_event_and_nightly_run_on_a_real_worker(stack):
    from fp16guard import examples

    data = stack["tmp"] / "data"
    examples.save_model("mlp", data / "mlp.onnx")
    examples.write_shards("mlp", data / "calib", 2, 4, seed=0)
    examples.write_shards("mlp", data / "holdout", 1, 4, seed=1)

    # 5. The release pipeline's side: one command, prints the event id.
    reg = subprocess.run(
        [sys.executable, "-m", "fp16guard.cli.main", "register", str(data / "mlp.onnx"), "--name", "mlp", "--version", "1.0",
         "--calib", str(data / "calib"), "--holdout", str(data / "holdout")],
        cwd=stack["tmp"], env=stack["env"], capture_output=True, text=True, timeout=60,
    )
    assert reg.returncode == 0, reg.stderr
    event_id = reg.stdout.strip()
    assert len(event_id) == 36, reg.stdout

    runs = _wait("the event-triggered flow run", lambda: _flow_runs(stack["api"], "on-registration"), 60, stack["logs"])
    assert len(runs) == 1
    triggered = runs[0]
    assert triggered.parameters["params"]["trigger_event"]["id"] == event_id

    # 6. Started by hand while the first run still waits for (or holds) the only worker slot.
    _prefect(["deployment", "run", "fp16guard-nightly/nightly"], stack["env"])

    def finished(deployment):
        return lambda: next((r for r in _flow_runs(stack["api"], deployment) if r.state_type.value in TERMINAL and not r.auto_scheduled), None)

    triggered = _wait("the triggered run to finish", finished("on-registration"), 150, stack["logs"])
    assert triggered.state_type.value == "COMPLETED", f"{triggered.state}\n" + stack["logs"][1].read_text(errors="replace")[-6000:]

    # The verified artifact is in the store, released, with the event in its lineage.
    runs_dir = stack["store"] / "mlp" / "1.0" / "runs"
    (run_dir,) = [p for p in runs_dir.iterdir() if (p / "status.json").exists()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "verified"
    assert manifest["trigger"]["type"] == "event"
    assert manifest["trigger"]["id"] == event_id
    assert manifest["trigger"]["event"] == "fp16guard.model.registered"
    assert manifest["flow_run"]["id"] == str(triggered.id)
    assert (run_dir / "model.mixed.onnx").stat().st_size > 0
    assert json.loads((run_dir / "verification.json").read_text())["passed"] is True
    release = json.loads((stack["store"] / "mlp" / "1.0" / "release.json").read_text())
    assert release["run_id"] == run_dir.name

    nightly = _wait("the nightly run to finish", finished("nightly"), 120, stack["logs"])
    assert nightly.state_type.value == "COMPLETED", f"{nightly.state}\n" + stack["logs"][1].read_text(errors="replace")[-6000:]
    # One worker with --limit 1 = one GPU: the two runs never overlapped.
    assert nightly.start_time >= triggered.end_time, (triggered.start_time, triggered.end_time, nightly.start_time)
    table = _artifact(stack["api"], "fp16guard-nightly")
    assert table is not None
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows == [{"model": "mlp/1.0", "release": run_dir.name, "passed": True, "samples": 4, "reason": ""}]

    # 7. The holdout folder grows with data 200x larger: the release now overflows in FP16. The
    #    nightly run must announce the regression and re-calibrate on new calibration data.
    import numpy as np

    big = {k: v * 200 for k, v in examples.sample_inputs("mlp", 4, seed=2).items()}
    np.savez(data / "holdout" / "shard-new.npz", **big)
    (data / "calib-new").mkdir()
    np.savez(data / "calib-new" / "shard-0000.npz", **{k: v * 200 for k, v in examples.sample_inputs("mlp", 4, seed=3).items()})
    nightly_params = {"calib": {"mlp": [str(data / "calib-new")]}}
    _prefect(["deployment", "run", "fp16guard-nightly/nightly", "--param", f"params={json.dumps(nightly_params)}"], stack["env"])

    def second_nightly():
        # Only runs started by hand: the cron schedule adds future scheduled runs.
        runs = [r for r in _flow_runs(stack["api"], "nightly") if not r.auto_scheduled]
        if len(runs) == 2 and all(r.state_type.value in TERMINAL for r in runs):
            return max(runs, key=lambda r: r.expected_start_time)
        return None

    second = _wait("the second nightly run to finish", second_nightly, 150, stack["logs"])
    assert second.state_type.value == "COMPLETED", f"{second.state}\n" + stack["logs"][1].read_text(errors="replace")[-6000:]
    rows = _artifact(stack["api"], "fp16guard-nightly").data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert rows[0]["passed"] is False and rows[0]["samples"] == 8, rows
    assert "output 'y'" in rows[0]["reason"]

    # Events are persisted asynchronously by the server.
    events = _wait("the regression event", lambda: _events(stack["api"], "fp16guard.release.regressed"), 30, stack["logs"])
    assert len(events) == 1
    payload = events[0]["payload"]
    assert events[0]["resource"]["prefect.resource.id"] == "fp16guard.release.mlp/1.0"
    assert payload["run_id"] == run_dir.name and payload["recalibration"]

    # The re-calibrated run verifies on the grown holdout; it is stored, not released (promote off).
    new_runs = [p for p in runs_dir.iterdir() if (p / "status.json").exists() and p.name != run_dir.name]
    assert len(new_runs) == 1
    new_manifest = json.loads((new_runs[0] / "manifest.json").read_text())
    assert new_manifest["status"] == "verified", new_manifest.get("reason")
    assert new_manifest["trigger"]["release_run_id"] == run_dir.name
    assert len(new_manifest["inputs"]["holdout"]) == 2 and len(new_manifest["inputs"]["calibration"]) == 3
    assert json.loads((stack["store"] / "mlp" / "1.0" / "release.json").read_text())["run_id"] == run_dir.name


def _events(api: str, name: str) -> list[dict]:
    import httpx

    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
    response = httpx.post(f"{api}/events/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()["events"]
