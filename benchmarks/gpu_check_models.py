"""Check FP16 storage emulation (ORT CPU) against real FP16 kernels on user-supplied ONNX models.

``benchmarks/gpu_check.py`` does this for the built-in examples; this script does it for models
the test suite has never seen (for instance PyTorch exports), with their own calibration and
holdout shards. For each model:

1. statistics of the calibration shards (``fp16guard.stats.collect``), a plan with the default
   :class:`~fp16guard.settings.PlanSettings` (``fp16guard.plan.planner.make_plan``);
2. an interpreter check: the FP32 model in PyTorch against onnxruntime (the ground truth is only
   as good as the interpreter);
3. two builds (``fp16guard.graph.convert.to_mixed_precision``): ``all_fp16`` (no FP32 node) and
   ``plan`` (the plan's FP32 nodes), each verified against the FP32 model on the holdout shards
   twice: through FP16 storage emulation on onnxruntime's CPU provider (``fp16guard.verify.compare.verify``,
   what fp16guard ships) and by running the built model in PyTorch with real FP16 kernels
   (``compare_runners`` with ``torch_fp16.TorchRunner``).

Columns: verdict of the verify gate, NaN/inf count in the float outputs, max relative error over
the float outputs (over finite candidate values), minimum cosine (n/a with NaN/inf), largest
mismatch fraction of integer outputs (``-`` when the model has none). ``agree`` = same verdict
and same finite-or-not on both sides. A model the interpreter cannot run gets one line that
names the op and why.

Run on the GPU machine (torch + CUDA, onnx, CPU onnxruntime)::

    PYTHONPATH=. python3 -m benchmarks gpu_check_models .zoo/t5block.onnx .zoo/vitish.onnx \\
        --out benchmarks/results/gpu_check_models.txt

Shards: ``--calib DIR`` / ``--holdout DIR`` once per model, in the models' order; by default
``<dir>/<stem>-calib`` and ``<dir>/<stem>-holdout`` beside ``<dir>/<stem>.onnx``.
``--device cpu`` runs the real-FP16 side on CPU half kernels (not a GPU ground truth; for trying
the script). Side effects: writes ``--out`` (text) and ``--json`` when given; nothing else.
Exit status: 0 when every build agrees, 1 when one does not, 2 on a usage or setup problem.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import results as bench_results
from benchmarks.harness.compare import COL, agrees, fmt, summarize
from benchmarks.harness.gpu import configure_torch

SUMMARY = "FP16 storage emulation (ORT CPU) against real FP16 kernels (PyTorch CUDA) on ONNX files you give"


def _shard_dirs(models: list[str], given: list[str] | None, suffix: str) -> list[Path]:
    if given:
        if len(given) != len(models):
            raise SystemExit(f"--{suffix} was given {len(given)} time(s) for {len(models)} model(s); expected once per model or never")
        return [Path(d) for d in given]
    return [Path(m).with_name(Path(m).stem + f"-{suffix}") for m in models]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu_check_models", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="ONNX model paths (FP32)")
    parser.add_argument("--calib", action="append", help="calibration shard folder, once per model (default <stem>-calib beside the model)")
    parser.add_argument("--holdout", action="append", help="holdout shard folder, once per model (default <stem>-holdout beside the model)")
    parser.add_argument("--device", default="cuda", help="torch device for the real-FP16 runs (default cuda)")
    parser.add_argument("--out", default=None, help="write the table here as well as to stdout")
    parser.add_argument("--json", default=None, help="write all figures (and the failure reasons) as JSON here")
    args = parser.parse_args(argv)
    calib_dirs = _shard_dirs(args.models, args.calib, "calib")
    holdout_dirs = _shard_dirs(args.models, args.holdout, "holdout")

    import onnx
    import onnxruntime
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.shards import discover_shards
    from fp16guard.io.model import load_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner
    from fp16guard.settings import PlanSettings, VerifySettings
    from fp16guard.stats.collect import reduce_stats, shard_stats
    from benchmarks.harness.torch_fp16 import TorchRunner, UnsupportedOpError
    from fp16guard.verify.compare import compare_runners, verify

    configured = configure_torch(args.device)
    if configured is None:
        return 2
    torch, device_name = configured
    log = bench_results.Log(bench_results.context("gpu_check_models", argv))
    say = log.say
    settings, plan_settings = VerifySettings(), PlanSettings()
    say(f"# fp16guard GPU check on unseen models: real FP16 (torch {torch.__version__} on {args.device}: {device_name}) vs FP16 storage emulation (onnxruntime {onnxruntime.__version__} CPU)")
    say(f"# onnx {onnx.__version__}, numpy {np.__version__}")
    say(f"# tolerances: max_rel_error={settings.max_rel_error}, min_cosine={settings.min_cosine}, max_mismatch_fraction={settings.max_mismatch_fraction}; plan: default PlanSettings (threshold={plan_settings.threshold})")
    say()
    header = f"{'model':10s} {'build':12s} {'fp32/nodes':>10s} | {'emulation (ORT CPU)':{COL}s} | {'real FP16 (torch)':{COL}s} | agree"
    say(header)
    say("-" * len(header))

    results: list[dict] = []
    disagreements = 0
    for model_path, calib_dir, holdout_dir in zip(args.models, calib_dirs, holdout_dirs):
        name = Path(model_path).stem
        start = time.perf_counter()
        model = load_model(model_path)
        n_nodes = len(model.graph.node)
        calib = discover_shards([str(calib_dir)])
        holdout = discover_shards([str(holdout_dir)], role="holdout")
        stats = reduce_stats([shard_stats(model_path, ref) for ref in calib])
        plan = make_plan(model, stats, plan_settings)
        record: dict = {"model": name, "path": str(model_path), "nodes": n_nodes, "calib_shards": [r.name for r in calib], "holdout_shards": [r.name for r in holdout], "plan_fp32_nodes": sorted(plan.fp32_names)}
        try:
            # Interpreter sanity: the FP32 model in torch against onnxruntime.
            with OnnxRuntimeRunner(model) as ref_run, TorchRunner(model, device=args.device) as t_run:
                fp32 = summarize(compare_runners(model, ref_run, model, t_run, holdout, settings))
        except UnsupportedOpError as exc:
            say(f"{name:10s} {'-':12s} {'-':>10s} | interpreter cannot run it: {exc}")
            record["unsupported"] = str(exc)
            results.append(record)
            disagreements += 1
            continue
        record["fp32_check"] = fp32
        say(f"{name:10s} {'fp32 check':12s} {f'0/{n_nodes}':>10s} | {'':{COL}s} | {fmt(fp32):{COL}s} |")
        record["builds"] = {}
        for build, fp32_nodes in (("all_fp16", set()), ("plan", set(plan.fp32_names))):
            candidate = to_mixed_precision(model, fp32_nodes)
            emu = summarize(verify(model, candidate, holdout, settings, emulate=True))
            with OnnxRuntimeRunner(model) as ref_run, TorchRunner(candidate, device=args.device) as t_run:
                real = summarize(compare_runners(model, ref_run, candidate, t_run, holdout, settings))
            ok = agrees(emu, real)
            disagreements += not ok
            cell = f"{len(fp32_nodes)}/{n_nodes}"
            say(f"{name:10s} {build:12s} {cell:>10s} | {fmt(emu):{COL}s} | {fmt(real):{COL}s} | {'yes' if ok else 'NO'}")
            record["builds"][build] = {"fp32_nodes": len(fp32_nodes), "emulation": emu, "real_fp16": real, "agree": ok}
        record["seconds"] = round(time.perf_counter() - start, 2)
        results.append(record)

    say()
    builds_total = sum(len(r.get("builds", {})) for r in results)
    agreed = sum(b["agree"] for r in results for b in r.get("builds", {}).values())
    checks = [r["fp32_check"]["max_rel_error"] for r in results if "fp32_check" in r]
    say(f"verdicts agree on {agreed} of {builds_total} builds; interpreter FP32 check max rel error {max(checks) if checks else float('nan'):.3g}")
    unsupported = [r["model"] for r in results if "unsupported" in r]
    if unsupported:
        say(f"not run (unsupported by the interpreter): {', '.join(unsupported)}")
    say()
    say("failure reasons (emulation | real FP16):")
    for r in results:
        for build, b in r.get("builds", {}).items():
            if b["emulation"]["reason"] or b["real_fp16"]["reason"]:
                say(f"  {r['model']}/{build}: {b['emulation']['reason']} | {b['real_fp16']['reason']}")
    log.save(args.out, args.json, results)
    return 0 if disagreements == 0 else 1

