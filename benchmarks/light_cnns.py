"""Benchmark: the plan strategies on the ONNX project's light test CNNs (issue 10's acceptance).

The ``onnx`` wheel ships ``onnx/backend/test/data/light/light_<name>.onnx``: real architectures
(VGG-19, ResNet-50, Inception v1/v2, DenseNet-121, SqueezeNet, AlexNet, ZFNet-512, ShuffleNet)
whose weights are ConstantOfShape fills (0.02 everywhere, which keeps the files at a few kB). With
no normalisation that works at those values, activations grow geometrically (light VGG-19 reaches
3e31), which makes them hard cases for FP16: the range rule pins most of every network.

For each model, in one process (the library only, no Prefect):

1. the batch dimension is made dynamic (``Reshape`` targets of ``[1, ...]`` become ``[-1, ...]``,
   which is the same computation at batch 1);
2. statistics on ``--calib`` N(0, 1) images (seeded), one shard
   (:func:`fp16guard.stats.collect.shard_stats`);
3. plans with ``pin`` (the range rule) and ``auto`` (the default: folding where it keeps fewer
   compute nodes FP32), repair off so the table shows the strategies themselves;
4. each build verified against the original FP32 model on ``--holdout`` fresh images with the
   default numeric gate (:func:`fp16guard.verify.compare.verify`; on the CPU through FP16 storage
   emulation, on CUDA with real FP16 kernels); the outputs are Softmax of huge logits (one-hot),
   so the error of the **logits** (the tensor the final Softmax reads) is reported too;
5. with ``--device cuda``, median latency (IOBinding, ``--warmup``/``--repeats``) at ``--batch``
   of FP32, all-FP16 (every node FP16: overflows), pin and auto builds.

Run::

    PYTHONPATH=. python -m benchmarks light_cnns --out light.txt --json light.json
    PYTHONPATH=$HOME/site:. python3 -m benchmarks light_cnns --device cuda --batch 32

Prints one row per model: compute nodes (Conv/Gemm/MatMul), FP32 compute nodes with pin and
auto, the strategy auto used, gate result and logits error of each build, latencies.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import gpu, timing  # noqa: E402
from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Plan strategies (pin, auto) on the onnx wheel's light CNNs: FP32 compute nodes, gate, logits error"

#: The light CNNs of the onnx wheel, in the order of the table.
MODELS = ("vgg19", "resnet50", "inception_v1", "inception_v2", "densenet121", "squeezenet", "bvlc_alexnet", "zfnet512", "shufflenet")


def light_model_path(name: str) -> Path:
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def rebatch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with a symbolic batch dimension ``N`` (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.size and shape[0] == 1 and -1 not in shape:
                shape[0] = -1
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape.astype(np.int64), node.input[1]))
    for value in list(out.graph.input) + list(out.graph.output):
        if value.name not in inits and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].dim_param = "N"
    del out.graph.value_info[:]
    return out


def _logits_tensor(model: onnx.ModelProto) -> str | None:
    """Name of the node that feeds the last Softmax (the logits), or None."""
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    return softmax[-1].name if softmax else None


def _with_output(model: onnx.ModelProto, node_name: str) -> tuple[onnx.ModelProto, str]:
    """``model`` with the first input of node ``node_name`` added as a graph output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensor = next(n.input[0] for n in out.graph.node if n.name == node_name)
    out.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return out, tensor


def logits_error(reference: onnx.ModelProto, candidate: onnx.ModelProto, softmax: str, images: np.ndarray, providers: list[str], emulate: bool) -> float | None:
    """max |candidate - FP32| / max |FP32| of the logits; None when the candidate's are not finite."""
    import onnxruntime as ort

    from fp16guard.graph.emulate import emulate_fp16_storage

    ref, ref_name = _with_output(reference, softmax)
    cand, cand_name = _with_output(emulate_fp16_storage(candidate) if emulate else candidate, softmax)
    feed = {reference.graph.input[0].name: images}
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=providers) for m in (ref, cand)]
    want = sessions[0].run([ref_name], feed)[0].astype(np.float64)
    got = sessions[1].run([cand_name], feed)[0].astype(np.float64)
    if not np.all(np.isfinite(got)):
        return None
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-300))


def run_model(name: str, args, work: Path, providers: list[str], log: bench_results.Log) -> dict:
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import normalize_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.plan.strategies import plan_model
    from fp16guard.plan.strategies.fold import COMPUTE_OPS, compute_fp32
    from fp16guard.settings import PlanSettings
    from fp16guard.stats.collect import reduce_stats, shard_stats
    from fp16guard.verify.compare import verify

    model = normalize_model(rebatch(onnx.load(light_model_path(name))))
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path)
    spec = model.graph.input[0]
    shape = [d.dim_value for d in spec.type.tensor_type.shape.dim[1:]]
    images = {}
    for role, count, seed in (("calibration", args.calib, 0), ("holdout", args.holdout, 1)):
        (folder / role).mkdir(exist_ok=True)
        images[role] = np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)
        np.savez(folder / role / "s0.npz", **{spec.name: images[role]})
    started = time.perf_counter()
    calib = discover_shards([folder / "calibration"], "calibration")
    holdout = discover_shards([folder / "holdout"], "holdout")
    stats = reduce_stats([shard_stats(path, ref, providers=providers) for ref in calib])
    stats_s = time.perf_counter() - started
    softmax = _logits_tensor(model)
    row = {"model": name, "compute": sum(n.op_type in COMPUTE_OPS for n in model.graph.node), "peak_max_abs": max(stats.column("max_abs").to_pylist()), "stats_s": stats_s, "logits_of": softmax}
    cuda = providers[0] == "CUDAExecutionProvider"
    builds = {}
    for strategy in ("pin", "auto"):
        started = time.perf_counter()
        plan, planned = plan_model(model, stats, PlanSettings(strategy=strategy, repair=False))
        fp32 = {e["name"] for e in plan["fp32_nodes"]}
        candidate = to_mixed_precision(planned, fp32)
        builds[strategy] = candidate
        report = verify(model, candidate, holdout, providers=providers)
        worst = report.get("worst_rel_error")
        row[strategy] = {
            "fp32_nodes": len(fp32),
            "fp32_compute": compute_fp32(plan),
            "used": plan["strategy"]["used"],
            "passed": bool(report["passed"]),
            "worst_rel_error": worst,
            "emulated": report.get("emulated"),
            "logits_rel_error": logits_error(model, candidate, softmax, images["holdout"], providers, emulate=not cuda) if softmax else None,
            "dropped_biases": len((plan.get("folding") or {}).get("dropped_biases", [])),
            "plan_s": time.perf_counter() - started,
        }
    if args.latency:
        timed = gpu.providers(args.device, nhwc=True, tf32=False)
        bench = np.random.default_rng(2).standard_normal((args.batch, *shape)).astype(np.float32)
        variants = {"fp32": model, "fp16": to_mixed_precision(model, set()), "pin": builds["pin"], "auto": builds["auto"]}
        row["ms"] = {}
        for k, m in variants.items():
            bound = gpu.BoundSession(gpu.session(m, timed, cpu_fallback=False)).bind({spec.name: bench})
            row["ms"][k] = timing.measure(bound.run, args.warmup, args.repeats).median_ms
    return row


def _logits(row: dict, build: dict) -> str:
    """The logits error cell: "-" when the model has no final Softmax, "inf/NaN" when the
    candidate's logits are not finite."""
    if not row.get("logits_of"):
        return "-"
    value = build["logits_rel_error"]
    return "inf/NaN" if value is None else format(value, ".3g")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks light_cnns", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--calib", type=int, default=4, help="calibration images (N(0,1), seeded)")
    parser.add_argument("--holdout", type=int, default=4, help="holdout images")
    parser.add_argument("--latency", action="store_true", help="time FP32 / all-FP16 / pin / auto builds (meaningful on CUDA only)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=None, help="write the table here")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    if args.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        print("CUDAExecutionProvider is not available (install onnxruntime-gpu, or use --device cpu)", file=sys.stderr)
        return 2
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    log = bench_results.Log(bench_results.context("light_cnns", argv, device=gpu.device_description(providers)))
    log.say(f"light CNNs of onnx {onnx.__version__}, onnxruntime {ort.__version__} on {args.device}")
    header = f"{'model':<13} {'compute':>7} {'peak |x|':>9} | {'pin fp32':>8} {'gate':>4} {'logits err':>10} | {'auto fp32':>9} {'used':>4} {'gate':>4} {'logits err':>10} {'bias 0':>6}"
    if args.latency:
        header += f" | {'fp32 ms':>8} {'fp16 ms':>8} {'pin ms':>8} {'auto ms':>8}"
    log.say(header)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fp16guard-light-") as tmp:
        for name in args.models:
            r = run_model(name, args, Path(tmp), providers, log)
            rows.append(r)
            p, a = r["pin"], r["auto"]
            line = (
                f"{name:<13} {r['compute']:>7} {r['peak_max_abs']:>9.2g} | {p['fp32_compute']:>8} {'pass' if p['passed'] else 'FAIL':>4} {_logits(r, p):>10} | "
                f"{a['fp32_compute']:>9} {a['used']:>4} {'pass' if a['passed'] else 'FAIL':>4} {_logits(r, a):>10} {a['dropped_biases']:>6}"
            )
            if args.latency:
                line += " | " + " ".join(f"{r['ms'][k]:>8.3f}" for k in ("fp32", "fp16", "pin", "auto"))
            log.say(line)
    log.save(args.out, args.json, rows)
    return 0

