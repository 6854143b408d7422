"""Check FP16 storage emulation (ORT CPU) against real FP16 kernels (PyTorch on CUDA).

For every example model (``fp16guard.examples``) and three builds of it:

- ``all_fp16``: every node FP16;
- ``producer_only``: only nodes whose *output* exceeds the threshold stay FP32 (the recipe that
  docs/FACTS.md #3 says is not enough);
- ``plan``: the plan fp16guard makes (``fp16guard.plan.planner.make_plan`` on in-graph statistics of the
  calibration shards; input-or-output rule),

it verifies the build against the FP32 model on holdout shards twice: through FP16 storage
emulation on onnxruntime's CPU provider (what ``fp16guard.verify.compare`` does), and by running the
mixed model itself in PyTorch with real FP16 kernels (``torch_fp16``). The two must
give the same verdict (finite or not, pass or fail) and similar errors.

Columns: verdict of the verify gate, NaN/inf count in the candidate outputs, max relative error
(over the finite candidate values; 0 when none is finite) and cosine (n/a with NaN/inf);
``agree`` = same verdict and same finite-or-not on both sides.

Run on the GPU machine (torch + CUDA, onnx, CPU onnxruntime)::

    PYTHONPATH=. python3 -m benchmarks gpu_check --out results.txt

``--device cpu`` runs the same on CPU half kernels (not a GPU ground truth; for trying the script).
Side effects: writes shards into a temporary folder; writes ``--out`` (text) and ``--json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import results as bench_results
from benchmarks.harness.compare import agrees, fmt, summarize
from benchmarks.harness.gpu import configure_torch

SUMMARY = "FP16 storage emulation (ORT CPU) against real FP16 kernels (PyTorch CUDA) on the built-in examples"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device for the real-FP16 runs (default cuda)")
    parser.add_argument("--out", default=None, help="write the table here as well as to stdout")
    parser.add_argument("--json", default=None, help="write all figures as JSON here")
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--holdout-samples", type=int, default=64)
    parser.add_argument("--models", nargs="*", default=None, help="example names (default: all)")
    args = parser.parse_args(argv)

    import onnx

    from fp16guard import examples
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.shards import discover_shards
    from fp16guard.plan.planner import make_plan
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner
    from fp16guard.settings import PlanSettings, VerifySettings
    from fp16guard.stats.collect import reduce_stats, shard_stats
    from benchmarks.harness.torch_fp16 import TorchRunner
    from fp16guard.verify.compare import compare_runners, verify

    configured = configure_torch(args.device)
    if configured is None:
        return 2
    torch, device_name = configured
    log = bench_results.Log(bench_results.context("gpu_check", argv))
    say = log.say

    import onnxruntime

    say(f"# fp16guard GPU check: real FP16 (torch {torch.__version__} on {args.device}: {device_name}) vs FP16 storage emulation (onnxruntime {onnxruntime.__version__} CPU)")
    say(f"# onnx {onnx.__version__}, numpy {np.__version__}")
    settings = VerifySettings()
    plan_settings = PlanSettings()
    say(f"# tolerances: max_rel_error={settings.max_rel_error}, min_cosine={settings.min_cosine}; plan threshold={plan_settings.threshold}")
    say(f"# calibration {args.calib_samples} samples (seed 1), holdout {args.holdout_samples} samples (seed 2), 2 shards each")
    say()
    header = f"{'model':15s} {'build':14s} {'fp32 nodes':>10s} | {'emulation (ORT CPU)':56s} | {'real FP16 (torch)':56s} | agree"
    say(header)
    say("-" * len(header))

    results = []
    disagreements = 0
    names = args.models or list(examples.EXAMPLES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            tmpdir = Path(tmp) / name
            model_path = examples.save_model(name, tmpdir / "model.onnx")
            from fp16guard.io.model import load_model

            model = load_model(model_path)
            half = args.calib_samples // 2
            examples.write_shards(name, tmpdir / "calib", 2, [half, args.calib_samples - half], seed=1)
            examples.write_shards(name, tmpdir / "holdout", 2, [args.holdout_samples // 2, args.holdout_samples - args.holdout_samples // 2], seed=2)
            calib = discover_shards([str(tmpdir / "calib")])
            holdout = discover_shards([str(tmpdir / "holdout")], role="holdout")
            stats = reduce_stats([shard_stats(model_path, ref) for ref in calib])
            plan = make_plan(model, stats, plan_settings)
            producers = {r["producer"] for r in stats.to_pylist() if r["producer"] and (r["max_abs"] > plan_settings.threshold or r["nonfinite"])}

            # Interpreter sanity: the FP32 model in torch matches onnxruntime.
            with OnnxRuntimeRunner(model) as ref_run, TorchRunner(model, device=args.device) as t_run:
                fp32 = summarize(compare_runners(model, ref_run, model, t_run, holdout, settings))
            say(f"{name:15s} {'fp32 (check)':14s} {0:>10d} | {'':56s} | {fmt(fp32):56s} |")

            builds = {"all_fp16": set(), "producer_only": producers, "plan": plan.fp32_names}
            for build, fp32_nodes in builds.items():
                candidate = to_mixed_precision(model, set(fp32_nodes))
                emu = summarize(verify(model, candidate, holdout, settings, emulate=True))
                with OnnxRuntimeRunner(model) as ref_run, TorchRunner(candidate, device=args.device) as t_run:
                    real = summarize(compare_runners(model, ref_run, candidate, t_run, holdout, settings))
                agree = agrees(emu, real)
                disagreements += not agree
                say(f"{name:15s} {build:14s} {len(fp32_nodes):>10d} | {fmt(emu):56s} | {fmt(real):56s} | {'yes' if agree else 'NO'}")
                results.append({"model": name, "build": build, "fp32_nodes": sorted(fp32_nodes), "nodes": len(model.graph.node), "emulation": emu, "real_fp16": real, "agree": agree})
            results.append({"model": name, "build": "fp32 (interpreter check)", "real_fp16": fp32})
    say()
    builds_total = sum(1 for r in results if "agree" in r)
    say(f"verdicts agree on {builds_total - disagreements} of {builds_total} builds; interpreter FP32 check max rel error {max(r['real_fp16']['max_rel_error'] for r in results if 'agree' not in r):.3g}")
    log.save(args.out, args.json, results)
    return 0 if disagreements == 0 else 1

