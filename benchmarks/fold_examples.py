"""Scale folding against pinning on the built-in examples and a small overflowing VGG-19 (CPU).

For each example model (``fp16guard.examples``: mlp, attention, rmsnorm, large_constant, demo)
and the VGG-19-shaped CNN of ``fold_latency`` at 32x32 with every width divided by 8, in one
process (the library only, no Prefect):

1. statistics of the calibration shards (:func:`fp16guard.stats.collect.shard_stats`);
2. plans with ``pin`` (the range rule) and ``auto`` (folding where it keeps fewer compute nodes
   FP32), repair off, so the table shows the strategies themselves
   (:func:`fp16guard.plan.strategies.plan_model`);
3. each build verified against the FP32 model on the holdout shards with the default gate on
   onnxruntime's CPU provider through FP16 storage emulation (:func:`fp16guard.verify.compare.verify`).

Data: examples, ``--samples`` calibration samples (seed 1) and as many holdout samples (seed 2),
two shards each (default 32); VGG, ``--vgg-samples`` N(0, 1) images each (default 8).
Figures: FP32 nodes (of them Conv/Gemm/MatMul), the strategy ``auto`` used, the worst relative
error over the outputs (inf where an output holds NaN/inf). Writes ``benchmarks/results/fold_examples-DATE-MACHINE[-LABEL].{json,md}``.

Usage::

    .venv/bin/python -m benchmarks fold_examples [--samples 32] [--vgg-samples 8] [--label L]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Scale folding (auto) against pinning on the examples and a small VGG-19: FP32 nodes and error (CPU)"

EXAMPLES = ("mlp", "attention", "rmsnorm", "large_constant", "demo")
VGG = "vgg19_32x32_div8"


def _write_vgg(folder: Path, samples: int) -> Path:
    """The fold_latency VGG-19 at 32x32, widths / 8, with calibration and holdout shards."""
    import onnx

    from benchmarks.fold_latency import build_vgg19_overflow
    from fp16guard.io.model import normalize_model

    folder.mkdir(parents=True)
    model = normalize_model(build_vgg19_overflow(32, 8))
    onnx.save(model, folder / "model.onnx")
    rng = np.random.default_rng(1)  # fold_latency's seed
    for role in ("calib", "holdout"):
        (folder / role).mkdir()
        np.savez(folder / role / "s0.npz", x=rng.standard_normal((samples, 3, 32, 32), dtype=np.float32))
    return folder / "model.onnx"


def run_one(name: str, path: Path) -> dict:
    """Statistics, both plans, both builds verified; one row."""
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.plan.strategies import plan_model
    from fp16guard.plan.strategies.fold import compute_fp32
    from fp16guard.settings import PlanSettings
    from fp16guard.stats.collect import reduce_stats, shard_stats
    from fp16guard.verify.compare import verify

    from benchmarks.harness.compare import summarize

    model = load_model(str(path))
    calib = discover_shards([str(path.parent / "calib")], "calibration")
    holdout = discover_shards([str(path.parent / "holdout")], "holdout")
    stats = reduce_stats([shard_stats(str(path), ref) for ref in calib])
    row: dict = {"model": name, "nodes": len(model.graph.node)}
    for strategy in ("pin", "auto"):
        plan, planned = plan_model(model, stats, PlanSettings(strategy=strategy, repair=False))
        fp32 = {e["name"] for e in plan["fp32_nodes"]}
        report = verify(model, to_mixed_precision(planned, fp32), holdout, providers=["CPUExecutionProvider"], emulate=True)
        row[strategy] = {"fp32_nodes": len(fp32), "fp32_compute": compute_fp32(plan), "used": plan["strategy"]["used"],
                         "passed": bool(report["passed"]), "worst_rel_error": summarize(report)["max_rel_error"]}
    return row


def _err(v: float) -> str:
    return "inf/NaN" if not np.isfinite(v) else f"{v:.2g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fold_examples", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="calibration and holdout samples per example (default 32)")
    parser.add_argument("--vgg-samples", type=int, default=8, help="calibration and holdout images for the VGG (default 8)")
    parser.add_argument("--label", default=None, help="suffix of the result files' names")
    parser.add_argument("--results", default=None, help="folder for the result files (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.samples < 2 or args.vgg_samples < 1:
        print(f"--samples must be at least 2 and --vgg-samples at least 1, got {args.samples} and {args.vgg_samples}", file=sys.stderr)
        return 2
    from fp16guard import examples

    ctx = bench_results.context("fold_examples", argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fp16guard-fold-examples-") as tmp:
        for name in EXAMPLES:
            folder = Path(tmp) / name
            path = examples.save_model(name, folder / "model.onnx")
            half = args.samples // 2
            examples.write_shards(name, folder / "calib", 2, [half, args.samples - half], seed=1)
            examples.write_shards(name, folder / "holdout", 2, [half, args.samples - half], seed=2)
            rows.append(run_one(name, Path(path)))
            print(f"{name}: pin {rows[-1]['pin']['fp32_nodes']}, auto {rows[-1]['auto']['fp32_nodes']}", flush=True)
        rows.append(run_one(VGG, _write_vgg(Path(tmp) / VGG, args.vgg_samples)))
    lines = [f"Holdout max relative error against FP32, CPU, FP16 storage emulation; examples {args.samples} calibration + "
             f"{args.samples} holdout samples, VGG {args.vgg_samples} + {args.vgg_samples}; repair off.", "",
             "| model | pin: FP32 nodes (compute) | auto uses | auto: FP32 nodes (compute) | error pin | error auto | gate pin / auto |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p, a = r["pin"], r["auto"]
        gate = f"{'pass' if p['passed'] else 'FAIL'} / {'pass' if a['passed'] else 'FAIL'}"
        lines.append(f"| {r['model']} | {p['fp32_nodes']} ({p['fp32_compute']}) | {a['used']} | {a['fp32_nodes']} ({a['fp32_compute']}) | "
                     f"{_err(p['worst_rel_error'])} | {_err(a['worst_rel_error'])} | {gate} |")
    js, md = bench_results.write(ctx, {"rows": rows}, "\n".join(lines), label=args.label, results_dir=args.results,
                                 title="Folding against pinning on the examples")
    print("\n".join(lines))
    print(f"wrote {md} and {js.name}")
    return 0
