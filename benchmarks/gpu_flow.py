"""The whole fp16guard flow (Prefect) on one machine, printing what a GPU worker records.

Runs ``flows.calibrate.calibrate`` on the ``demo`` example (calibration and holdout shards written
here) against a temporary Prefect server (``prefect_test_harness``) and a temporary store, with
default parameters (providers auto, profile batches auto), then prints the run summary, the
manifest's ``backend``, ``providers`` and ``profile``, and the verification's ``execution``.

    PYTHONPATH=. python3 -m benchmarks gpu_flow [--out FILE]

Side effects: a temporary folder (store, shards, Prefect home); the printed lines go to ``--out``
or to ``benchmarks/results/gpu_flow-DATE-MACHINE.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "The whole Prefect flow on the demo: what the manifest records (backend, providers, profile)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu_flow", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the printed lines here (default: the results folder)")
    args = parser.parse_args(argv)
    log = bench_results.Log(bench_results.context("gpu_flow", argv))
    tmp = Path(tempfile.mkdtemp(prefix="fp16guard-gpu-flow-"))
    os.environ.setdefault("PREFECT_HOME", str(tmp / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from flows.calibrate import calibrate
    from fp16guard import examples
    from fp16guard.settings import RunParameters

    model = examples.save_model("demo", tmp / "demo.onnx")
    examples.write_shards("demo", tmp / "calib", 4, 16, seed=1)
    examples.write_shards("demo", tmp / "holdout", 2, 16, seed=2)
    params = RunParameters(model=str(model), calib=[str(tmp / "calib")], holdout=[str(tmp / "holdout")], name="demo", version="1", store=str(tmp / "store"))
    t0 = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        t1 = time.perf_counter()
        result = calibrate(params)
        t2 = time.perf_counter()
    run_dir = Path(result["run_dir"].removeprefix("file://"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    verification = json.loads((run_dir / "verification.json").read_text())
    print = log.say
    print(f"server start {t1 - t0:.1f} s, flow {t2 - t1:.1f} s")
    print("summary: " + json.dumps({k: v for k, v in result.items() if k in ("passed", "status", "released", "fp32_nodes", "worst_rel_error", "speed")}, default=str))
    print("manifest backend: " + json.dumps(manifest.get("backend")))
    print(f"manifest providers: {manifest.get('providers')}")
    print("manifest profile: " + json.dumps(manifest.get("profile")))
    print(f"verification execution: {verification.get('execution')}")
    print(f"verification cpu_fallback_nodes: {verification.get('cpu_fallback_nodes')} placement: {verification.get('placement')}")
    log.save(args.out, None, {"summary": result, "manifest": manifest, "verification_execution": verification.get("execution")})
    return 0 if result.get("passed") else 1
