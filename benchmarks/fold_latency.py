"""Benchmark: latency of scale folding against the range rule, FP32 and all-FP16 (onnxruntime).

What it does, in one process (needs numpy, onnx, onnxruntime — onnxruntime-gpu on a GPU — and
this repository on ``PYTHONPATH`` for the graph passes ``fp16guard.graph.*``, which need nothing
else; no Prefect, no pyarrow, no pydantic):

1. builds a VGG-19-shaped CNN whose later layers overflow FP16 (:func:`build_vgg19_overflow`:
   VGG-19's 16 Conv3x3+Relu in blocks 2-2-4-4-4 with MaxPool, Flatten, 3 Gemm; He-initialised
   weights times ``--gain`` per layer, so activations grow ~gain per layer; seeded);
2. measures max |x| of every float tensor on ``--calib`` samples of N(0, 1) input (every tensor
   exposed as an output; TF32 off on the GPU, so the statistics are FP32);
3. makes four models: ``fp32``; ``fp16`` (every node FP16); ``range`` (the range rule: every node
   with a float input or output above ``--threshold`` stays FP32 — the rule of
   ``fp16guard.plan.rules.activation_range``); ``fold`` (scales folded into the weights by
   ``fp16guard.graph.fold_scales``, then the same range rule on the folded model);
4. checks each against FP32 on ``--holdout`` fresh samples (max |error| / max |FP32|, NaN/inf
   count) on the chosen provider (real FP16 kernels on CUDA);
5. times each at ``--batch`` (default 32) with IOBinding (input and output on the device),
   ``--warmup`` runs then ``--repeats`` timed runs, and reports medians. CUDA provider options:
   ``prefer_nhwc=1`` (``--no-nhwc`` to turn off), TF32 as onnxruntime's default (``--no-tf32``).

Run on the GPU machine (from the repository root)::

    PYTHONPATH=. python3 -m benchmarks fold_latency --json fold_latency.json

Try it on a CPU with tiny sizes (FP16 there is not a speed measurement, NOTES: the CPU provider
computes most FP16 nodes in FP32)::

    PYTHONPATH=. .venv/bin/python -m benchmarks fold_latency --device cpu --resolution 32 \\
        --width-div 16 --batch 2 --calib 4 --holdout 4 --warmup 1 --repeats 3

Prints one table row per model: FP32 nodes (all / Conv+Gemm), median ms, speed-up over FP32,
share of the all-FP16 gain (``(fp32 - x) / (fp32 - fp16)``), max relative error and NaN/inf
count. ``--json`` writes the same figures with the environment.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the graph passes of this repository

from benchmarks.harness import gpu, timing  # noqa: E402
from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Scale folding against the range rule on an overflowing VGG-19: FP32 nodes, error, latency"

#: (out_channels, convs) per block of VGG-19; each block ends with a 2x2 max-pool.
VGG19_BLOCKS = [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)]
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


def build_vgg19_overflow(resolution: int = 224, width_div: int = 1, gain: float = 1.9, seed: int = 0) -> onnx.ModelProto:
    """The VGG-19-shaped CNN of this benchmark (and of ``tests/test_fold_scales.py`` at 32x32).

    Channels are divided by ``width_div`` (at least 4); Gemm widths 4096/``width_div`` and
    1000/``width_div``. Input ``x`` [N, 3, resolution, resolution] (``resolution`` a multiple of
    32); output ``y``. Opset 17, IR 8, every node named, weights embedded.
    """
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def weight(name, shape, fan_in, scale):
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale * math.sqrt(2.0 / fan_in))
        inits.append(numpy_helper.from_array(w.astype(np.float32), name))
        return name

    x, cin = "x", 3
    for b, (cout, convs) in enumerate(VGG19_BLOCKS, start=1):
        cout = max(cout // width_div, 4)
        for c in range(1, convs + 1):
            name = f"conv{b}_{c}"
            w = weight(f"{name}.w", (cout, cin, 3, 3), cin * 9, gain)
            bias = weight(f"{name}.b", (cout,), 8.0, 1.0)
            nodes.append(helper.make_node("Conv", [x, w, bias], [name], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Relu", [name], [f"relu{b}_{c}"], name=f"relu{b}_{c}"))
            x, cin = f"relu{b}_{c}", cout
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{b}"], name=f"pool{b}", kernel_shape=[2, 2], strides=[2, 2]))
        x = f"pool{b}"
    nodes.append(helper.make_node("Flatten", [x], ["flatten"], name="flatten", axis=1))
    x = "flatten"
    side = resolution // 32
    hidden, classes = max(4096 // width_div, 8), max(1000 // width_div, 4)
    for i, (fin, fout) in enumerate([(cin * side * side, hidden), (hidden, hidden), (hidden, classes)], start=6):
        w = weight(f"fc{i}.w", (fout, fin), fin, gain)
        bias = weight(f"fc{i}.b", (fout,), 8.0, 1.0)
        nodes.append(helper.make_node("Gemm", [x, w, bias], [f"fc{i}"], name=f"fc{i}", transB=1))
        x = f"fc{i}"
        if i < 8:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(
        nodes, "vgg19_overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, resolution, resolution])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ------------------------------------------------------------------------------------------


def _session(model: onnx.ModelProto, providers):
    # Every node must run on the GPU: an FP16 node placed on the CPU would compute in FP32 and
    # hide overflow (and distort the timing).
    return gpu.session(model, providers, cpu_fallback=False)


def measure_max_abs(model: onnx.ModelProto, x: np.ndarray, providers, chunk: int = 2, mean_abs: dict | None = None) -> dict[str, float]:
    """max |x| of every float tensor (graph input and node outputs) over the samples ``x``; with a
    ``mean_abs`` dict, also fills it with each tensor's mean |x| (what the statistics' ``abs_sum /
    examined`` gives the product, which decides negligible biases)."""
    from fp16guard.graph.info import tensor_types

    types = tensor_types(model)
    names = [o for n in model.graph.node for o in n.output if o and types.is_float32(o)]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    declared = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in declared)
    session = _session(exposed, providers)
    out_names = [o.name for o in session.get_outputs()]
    peak = {"x": float(np.abs(x).max())}
    sums: dict[str, list[float]] = {"x": [float(np.abs(x).sum()), float(x.size)]}
    for i in range(0, len(x), chunk):
        for name, value in zip(out_names, session.run(None, {"x": x[i : i + chunk]})):
            peak[name] = max(peak.get(name, 0.0), float(np.abs(value).max()))
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(np.abs(value).sum(dtype=np.float64))
            acc[1] += float(value.size)
    if mean_abs is not None:
        mean_abs.update({k: total / count for k, (total, count) in sums.items() if count})
    return peak


def range_rule(model: onnx.ModelProto, max_abs: dict[str, float], threshold: float) -> set[str]:
    """Nodes with a float input or output whose max |x| is above ``threshold`` (or unknown)."""
    from fp16guard.graph.info import tensor_types

    types = tensor_types(model)
    inits = {t.name for t in model.graph.initializer}
    pinned = set()
    for node in model.graph.node:
        for name in list(node.input) + list(node.output):
            if name and name not in inits and types.is_float32(name):
                value = max_abs.get(name, math.inf)
                if not value <= threshold:
                    pinned.add(node.name)
                    break
    return pinned


def fold(model: onnx.ModelProto, max_abs: dict[str, float], threshold: float, mean_abs: dict[str, float] | None = None) -> tuple[onnx.ModelProto, dict[str, float], dict[str, int]]:
    """The folded FP32 model, the max |x| it would have, and the exponents (``mean_abs``: mean |x|
    per tensor, which lets negligible biases be dropped as the product does)."""
    from fp16guard.graph.fold_batchnorm import fold_batchnorm
    from fp16guard.graph.fold_scales import TensorRange, apply_scales, solve_scales

    bn, _ = fold_batchnorm(model)
    means = mean_abs or {}
    solution = solve_scales(bn, {k: TensorRange(v, mean_abs=means.get(k)) for k, v in max_abs.items()}, threshold)
    folded, new = apply_scales(bn, solution.exponents, [d["node"] for d in solution.dropped_biases])
    outputs = {o.name for o in folded.graph.output}
    scaled = {k: (v if k in outputs else v / 2.0 ** solution.exponents.get(k, 0)) for k, v in max_abs.items()}
    for name, (source, e) in new.items():
        scaled[name] = max_abs[source] / 2.0**e
    return folded, scaled, solution.exponents


def check(ref_session, session, x: np.ndarray, chunk: int) -> tuple[float, int]:
    """max |candidate - fp32| / max |fp32| over the samples (finite values) and the NaN/inf count."""
    err, peak, bad = 0.0, 0.0, 0
    for i in range(0, len(x), chunk):
        feed = {"x": x[i : i + chunk]}
        ref = ref_session.run(None, feed)[0].astype(np.float64)
        got = session.run(None, feed)[0].astype(np.float64)
        finite = np.isfinite(got)
        bad += int(got.size - finite.sum())
        peak = max(peak, float(np.abs(ref).max()))
        if finite.any():
            err = max(err, float(np.abs(got[finite] - ref[finite]).max()))
    return err / peak if peak else 0.0, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fold_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width-div", type=int, default=1, help="divide every width by this (1: VGG-19's own widths)")
    parser.add_argument("--gain", type=float, default=1.9, help="weight scale over He's, per layer (activation growth per layer)")
    parser.add_argument("--threshold", type=float, default=10000.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calib", type=int, default=8, help="calibration samples for the statistics")
    parser.add_argument("--holdout", type=int, default=8, help="fresh samples for the error check")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--no-nhwc", action="store_true", help="do not set prefer_nhwc=1 on the CUDA provider")
    parser.add_argument("--no-tf32", action="store_true", help="turn TF32 off for the timed FP32 runs too")
    parser.add_argument("--json", default=None, help="write the figures here (default: benchmarks/results/fold_latency-DATE-MACHINE.{json,md})")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from fp16guard.graph.convert import to_mixed_precision

    if args.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        print("CUDAExecutionProvider is not available (install onnxruntime-gpu, or pass --device cpu)", file=sys.stderr)
        return 2
    started = time.time()
    model = build_vgg19_overflow(args.resolution, args.width_div, args.gain)
    rng = np.random.default_rng(1)
    shape = (3, args.resolution, args.resolution)
    calib = rng.standard_normal((args.calib, *shape), dtype=np.float32)
    holdout = rng.standard_normal((args.holdout, *shape), dtype=np.float32)
    bench = rng.standard_normal((args.batch, *shape), dtype=np.float32)
    stats_providers = gpu.providers(args.device, nhwc=False, tf32=False)
    mean_abs: dict[str, float] = {}
    max_abs = measure_max_abs(model, calib, stats_providers, mean_abs=mean_abs)
    folded, folded_max, exponents = fold(model, max_abs, args.threshold, mean_abs)
    pinned = range_rule(model, max_abs, args.threshold)
    folded_pinned = range_rule(folded, folded_max, args.threshold)
    variants = {
        "fp32": (model, None),
        "fp16": (to_mixed_precision(model, set()), set()),
        "range": (to_mixed_precision(model, pinned), pinned),
        "fold": (to_mixed_precision(folded, folded_pinned), folded_pinned),
    }
    ops = {n.name: n.op_type for m in (model, folded) for n in m.graph.node}
    providers = gpu.providers(args.device, nhwc=not args.no_nhwc, tf32=not args.no_tf32)
    check_providers = gpu.providers(args.device, nhwc=not args.no_nhwc, tf32=False)
    log = bench_results.Log(bench_results.context("fold_latency", argv, device=gpu.device_description(providers)))
    ref = _session(model, check_providers)
    rows = {}
    for name, (candidate, fp32_nodes) in variants.items():
        err, bad = check(ref, _session(candidate, check_providers), holdout, chunk=min(8, args.holdout)) if name != "fp32" else (0.0, 0)
        ms = timing.measure(gpu.BoundSession(_session(candidate, providers)).bind({"x": bench}).run, args.warmup, args.repeats).median_ms
        nodes = sorted(fp32_nodes) if fp32_nodes is not None else None
        rows[name] = {
            "ms": ms,
            "fp32_nodes": None if nodes is None else len(nodes),
            "fp32_compute_nodes": None if nodes is None else sum(ops.get(n) in COMPUTE_OPS for n in nodes),
            # A candidate holding NaN/inf has no finite error: strict JSON null, printed "inf".
            "max_rel_error": None if bad else err,
            "nonfinite": bad,
        }
    gain = rows["fp32"]["ms"] - rows["fp16"]["ms"]
    log.say(f"VGG-19-shaped CNN {args.resolution}x{args.resolution} /{args.width_div}, batch {args.batch}, {args.device}, peak max|x| {max(max_abs.values()):.3g}, threshold {args.threshold:g}")
    log.say(f"fold exponents: {dict(sorted(exponents.items(), key=lambda kv: list(max_abs).index(kv[0]) if kv[0] in max_abs else 0))}")
    log.say(f"{'model':<6} {'fp32 nodes':>10} {'compute':>8} {'median ms':>10} {'x fp32':>7} {'of fp16 gain':>12} {'max rel err':>12} {'nan/inf':>8}")
    for name, r in rows.items():
        r["speedup"] = rows["fp32"]["ms"] / r["ms"]
        r["share_of_fp16_gain"] = (rows["fp32"]["ms"] - r["ms"]) / gain if gain > 0 else None
        share = f"{100 * r['share_of_fp16_gain']:.0f}%" if r["share_of_fp16_gain"] is not None else "n/a"
        nodes = "-" if r["fp32_nodes"] is None else str(r["fp32_nodes"])
        comp = "-" if r["fp32_compute_nodes"] is None else str(r["fp32_compute_nodes"])
        log.say(f"{name:<6} {nodes:>10} {comp:>8} {r['ms']:>10.3f} {r['speedup']:>7.2f} {share:>12} {'inf' if r['max_rel_error'] is None else format(r['max_rel_error'], '.3g'):>12} {r['nonfinite']:>8}")
    env = {"python": platform.python_version(), "onnxruntime": ort.__version__, "providers": str(providers)}
    log.save(None, args.json, {"args": vars(args), "env": env, "rows": rows, "exponents": exponents, "seconds": time.time() - started})
    return 0
