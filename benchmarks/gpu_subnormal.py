"""Benchmark: what onnxruntime's CUDA kernels do with FP16 subnormal values (|x| < 2**-14).

FP16 storage emulation (``fp16guard.graph.emulate``) keeps subnormals: a weight of 4.4e-5 is
stored within 4e-4 of its value. Whether the GPU's FP16 kernels compute with them, or flush them
to zero, decides whether a plan that verified through emulation holds on the GPU. Each case is a
tiny model built in code, run in FP16 on the given providers and compared with the same model in
FP32 (max |error| / max |FP32|; a flushed operand gives an error near 1):

* ``conv-w-subnormal``: Conv 3x3, 64 -> 64 channels, NCHW [8, 64, 28, 28], weights all equal to a
  subnormal value (4.4e-5), input N(0, 1) times 100 (so outputs are normal);
* ``conv-w-normal``: the same with weights 100x larger and input 100x smaller (control);
* ``conv-x-subnormal``: normal weights (N(0, 0.05)), input N(0, 1) times 3e-6 (subnormal);
* ``gemm-w-subnormal``: MatMul [256, 512] x [512, 512] with subnormal weights;
* ``mul-subnormal``: element-wise Mul of N(0, 1) by a subnormal constant;
* ``add-subnormal-bias``: element-wise Add of a subnormal constant to zeros (is it kept?).

Run on the GPU machine (from the repository root)::

    PYTHONPATH=$HOME/site:$PWD python3 -m benchmarks gpu_subnormal --out f.txt

``--providers CPUExecutionProvider`` runs the same cases on the CPU (where FP16 nodes run as FP32
behind casts; a smoke run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import gpu  # noqa: E402
from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "What onnxruntime's CUDA FP16 kernels do with subnormal weights and inputs (flush or keep)"

SUBNORMAL = 4.4e-5  # 2**-14 is 6.1e-5: this is subnormal in FP16, exact to 4e-4 there


def _model(nodes, inputs, outputs, inits, dtype: int) -> onnx.ModelProto:
    cast = []
    for t in inits:
        cast.append(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16 if dtype == TensorProto.FLOAT16 else np.float32), t.name))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, dtype, s) for n, s in inputs], [helper.make_tensor_value_info(n, dtype, None) for n in outputs], initializer=cast)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def cases(rng: np.random.Generator) -> dict:
    """name -> (builder(dtype) -> model, feeds as float32)."""
    out = {}

    def conv(weight_value, x):
        w = numpy_helper.from_array(np.full((64, 64, 3, 3), weight_value, np.float32) if np.isscalar(weight_value) else weight_value, "w")
        return (lambda dt: _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], [("x", list(x.shape))], ["y"], [w], dt)), {"x": x}

    x = rng.standard_normal((8, 64, 28, 28)).astype(np.float32)
    out["conv-w-subnormal"] = conv(SUBNORMAL, x * 100)
    out["conv-w-normal"] = conv(SUBNORMAL * 100, x)
    out["conv-x-subnormal"] = conv((rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32), x * 3e-6)
    a = rng.standard_normal((256, 512)).astype(np.float32) * 100
    w = numpy_helper.from_array(np.full((512, 512), SUBNORMAL, np.float32), "w")
    out["gemm-w-subnormal"] = ((lambda dt: _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [256, 512])], ["y"], [w], dt)), {"x": a})
    k = numpy_helper.from_array(np.asarray(SUBNORMAL, np.float32), "k")
    v = rng.standard_normal((4096,)).astype(np.float32)
    out["mul-subnormal"] = ((lambda dt: _model([helper.make_node("Mul", ["x", "k"], ["y"])], [("x", [4096])], ["y"], [k], dt)), {"x": v})
    out["add-subnormal-bias"] = ((lambda dt: _model([helper.make_node("Add", ["x", "k"], ["y"])], [("x", [4096])], ["y"], [k], dt)), {"x": np.zeros(4096, np.float32)})
    return out


def run(model: onnx.ModelProto, feeds: dict, providers: list, nhwc: bool) -> np.ndarray:
    # TF32 off: the FP32 reference side must be FP32; NHWC as asked (both layouts are cases).
    session = gpu.session(model, gpu.providers(providers, nhwc=nhwc, tf32=False))
    dtype = np.float16 if model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16 else np.float32
    return session.run(None, {k: v.astype(dtype) for k, v in feeds.items()})[0].astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu_subnormal", description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default=None, help="comma-separated (default: CUDA when available, else CPU)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    providers = args.providers.split(",") if args.providers else (["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["CPUExecutionProvider"])
    log = bench_results.Log(bench_results.context("gpu_subnormal", argv, device=gpu.device_description(providers)))
    log.say(f"FP16 subnormals on {providers[0]}, onnxruntime {ort.__version__}")
    log.say(f"{'case':<20} {'layout':<6} {'fp16 rel err':>12} {'fp32 max |y|':>12} {'fp16 max |y|':>12}")
    results = []
    for name, (build, feeds) in cases(np.random.default_rng(0)).items():
        ref = run(build(TensorProto.FLOAT), feeds, ["CPUExecutionProvider"], nhwc=False)
        for nhwc in ((False, True) if providers[0] == "CUDAExecutionProvider" and name.startswith("conv") else (False,)):
            got = run(build(TensorProto.FLOAT16), feeds, providers, nhwc)
            peak = float(np.abs(ref).max())
            err = float(np.abs(got - ref).max() / peak) if peak else float(np.abs(got).max())
            layout = "nhwc" if nhwc else "nchw"
            log.say(f"{name:<20} {layout:<6} {err:>12.3g} {peak:>12.4g} {float(np.abs(got).max()):>12.4g}")
            results.append({"case": name, "layout": layout, "rel_error": err, "fp32_max_abs": peak, "fp16_max_abs": float(np.abs(got).max())})
    log.save(args.out, args.json, results)
    return 0

