"""Profile table on a GPU: how much faster than FP32 the fp16guard artifact is, and how much of
the all-FP16 gain it keeps, for the example models and a VGG-19-shaped overflowing CNN.

For each model, library level (no Prefect): calibration statistics on the chosen providers (TF32
off), the plan (:func:`fp16guard.plan.planner.make_plan`), ``model.mixed.onnx``, verification
against FP32 on holdout data through the onnxruntime backend (on CUDA: real FP16 kernels, CPU
placements detected), then :func:`fp16guard.backends.profile.profile_artifact` at each batch:
median latency with IOBinding after warm-up of FP32, the artifact and the all-FP16 build.

Run on the GPU machine with onnxruntime-gpu, from the repository root::

    PYTHONPATH=. python3 -m benchmarks gpu_profile --out results.txt --json results.json

``--device cpu`` runs the same on the CPU provider with few timed runs (a CPU latency is not
FP16's; for trying the script). Side effects: temporary folder for models and shards; writes
``--out`` (the table) and ``--json`` (all records) when given.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Artifact against FP32 and all-FP16 latency on a GPU (examples, overflowing VGG-19): gain kept"

# The same VGG-19-shaped overflowing CNN as the folding benchmark (one builder for both).
from benchmarks.fold_latency import build_vgg19_overflow  # noqa: E402


def _write_vgg_shards(folder: Path, count: int, samples: int, resolution: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.savez(folder / f"shard-{i:04d}.npz", x=rng.standard_normal((samples, 3, resolution, resolution)).astype(np.float32))


def run_model(name: str, work: Path, providers: list[str], batches: list[int], args) -> dict:
    """Statistics, plan, artifact, verification and profile of one model; returns the record."""
    from fp16guard import examples
    from fp16guard.backends.registry import get_backend
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import input_specs, load_model, save_model
    from fp16guard.io.shards import discover_shards, load_shard, prepare_feeds
    from fp16guard.plan.planner import make_plan
    from fp16guard.settings import PlanSettings, VerifySettings
    from fp16guard.stats.collect import StatsSession, reduce_stats

    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if name == "vgg19_overflow":
        path = folder / "m.onnx"
        save_model(build_vgg19_overflow(args.resolution), path)
        _write_vgg_shards(folder / "calib", 2, args.vgg_samples, args.resolution, seed=1)
        _write_vgg_shards(folder / "holdout", 1, args.vgg_samples, args.resolution, seed=2)
    else:
        path = examples.save_model(name, folder / "m.onnx")
        examples.write_shards(name, folder / "calib", 2, 32, seed=1)
        examples.write_shards(name, folder / "holdout", 2, 32, seed=2)
    calib = discover_shards([str(folder / "calib")])
    holdout = discover_shards([str(folder / "holdout")], "holdout")
    backend = get_backend("onnxruntime", providers)
    with StatsSession(path, batch_size=args.stats_batch, providers=backend.providers) as session:
        stats = reduce_stats([session.run(ref) for ref in calib])
    model = load_model(path)
    plan = make_plan(model, stats, PlanSettings())
    artifact = save_model(to_mixed_precision(model, set(plan.fp32_names)), folder / "model.mixed.onnx")
    report = backend.verify(path, artifact, holdout, VerifySettings(), batch_size=args.stats_batch)
    sample = prepare_feeds(calib[0], load_shard(calib[0]), input_specs(model))
    on_cpu = backend.providers[0] != "CUDAExecutionProvider"
    profile = backend.profile(path, artifact, sample, batches, **({"time_on_cpu": True} if on_cpu else {}))
    profile_tf32_off = None if on_cpu or not args.tf32_off else backend.profile(path, artifact, sample, batches, tf32=False)
    worst = max((o.get("max_rel_error") or math.inf) if o.get("nonfinite", 0) == 0 else math.inf for o in report["outputs"].values())
    return {
        "model": name,
        "nodes": len(model.graph.node),
        "fp32_nodes": len(plan.fp32_names),
        "implementation": backend.implementation,
        "verified": report["passed"],
        "worst_rel_error": worst,
        "execution": report.get("execution"),
        "cpu_fallback_nodes": report.get("cpu_fallback_nodes"),
        "profile": profile,
        "profile_tf32_off": profile_tf32_off,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def table(records: list[dict], key: str = "profile") -> list[str]:
    """The profile table, one line per model and batch (``key``: which profile record)."""
    lines = [f"{'model':16s} {'FP32 nodes':>10s} {'verified':>8s} {'batch':>5s} {'FP32 ms':>9s} {'artifact':>9s} {'all-FP16':>9s} {'speed-up':>8s} {'FP16 s-up':>9s} {'gain kept':>9s}"]
    for r in records:
        rows = (r.get(key) or {}).get("batches") or [{}]
        for row in rows:
            kept = row.get("gain_kept")
            lines.append(
                f"{r['model']:16s} {str(r['fp32_nodes']) + '/' + str(r['nodes']):>10s} {('yes' if r['verified'] else 'NO'):>8s} {row.get('batch', '-')!s:>5s} "
                f"{row.get('fp32_ms', float('nan')):9.3f} {row.get('artifact_ms', float('nan')):9.3f} {row.get('all_fp16_ms', float('nan')):9.3f} "
                f"{row.get('speedup') or float('nan'):7.2f}x {row.get('fp16_speedup') or float('nan'):8.2f}x {('—' if kept is None else ('none' if kept <= 0 else f'{kept:.0%}')):>9s}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--models", nargs="*", default=None, help="example names and/or vgg19_overflow (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--resolution", type=int, default=224, help="VGG input side (multiple of 32; default 224)")
    parser.add_argument("--vgg-samples", type=int, default=16, help="samples per VGG calibration/holdout shard")
    parser.add_argument("--stats-batch", type=int, default=8, help="samples per inference call for statistics and verification")
    parser.add_argument("--tf32-off", action="store_true", help="also time everything with TF32 off (second table)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from fp16guard import examples
    from fp16guard.backends.device import device_name
    from fp16guard.runners.onnxrt import CPU, CUDA, cuda_usable

    import onnxruntime as ort

    if args.device == "cuda" and not cuda_usable():
        print("the CUDA provider is not usable here (needs onnxruntime-gpu and a GPU); use --device cpu to try the script", file=sys.stderr)
        return 2
    providers = [CUDA, CPU] if args.device == "cuda" else [CPU]
    names = args.models or sorted(examples.EXAMPLES) + ["vgg19_overflow"]
    header = [
        "fp16guard GPU profile",
        f"device: {device_name(providers)}; onnxruntime {ort.__version__} ({', '.join(providers)}; IOBinding; median of 50 runs after 10 warm-up)",
        "statistics and verification with TF32 off; timings with onnxruntime's default TF32 on (what a deployment runs) unless marked",
        "speed-up = FP32 / artifact; FP16 s-up = FP32 / all-FP16 (every node FP16: the unreachable reference);",
        "gain kept = (FP32 - artifact) / (FP32 - all-FP16), '—' where all-FP16 is not 5% faster than FP32, 'none' where the artifact is not faster",
        "",
    ]
    log = bench_results.Log(bench_results.context("gpu_profile", argv))
    for line in header:
        log.say(line)
    records = []
    with log.capture(), tempfile.TemporaryDirectory(prefix="fp16guard-gpu-profile-") as tmp:
        for name in names:
            record = run_model(name, Path(tmp), providers, args.batches, args)
            records.append(record)
            print(f"{name}: {record['fp32_nodes']}/{record['nodes']} nodes FP32; verified={record['verified']} (worst rel {record['worst_rel_error']:.3g}); "
                  f"{record['execution']}; {record['seconds']} s", flush=True)
    lines = ["TF32 on (onnxruntime default):"] + table(records)
    if args.tf32_off:
        lines += ["", "TF32 off (true FP32 GEMMs and convolutions):"] + table(records, "profile_tf32_off")
    log.say()
    for line in lines:
        log.say(line)
    log.save(args.out, args.json, {"header": header, "records": records})
    return 0
