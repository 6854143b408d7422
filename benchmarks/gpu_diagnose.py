"""Diagnostics of onnxruntime-gpu behaviour that fp16guard relies on (prints facts; no asserts).

1. Node placement in a CUDA session for FP16 ops that may lack a CUDA kernel: the profiler's
   ``provider`` per node, whether ``session.disable_cpu_ep_fallback=1`` refuses the session (and
   its message), and onnxruntime's own verbose placement log lines.
2. The all-FP16 RMSNorm example on real FP16 kernels with graph optimisations "all" and
   "disable": NaN/inf count and relative error against FP32, and the optimised graph's op types
   (a fused SimplifiedLayerNormalization computes in FP32 inside one kernel).

Run on the GPU machine: ``PYTHONPATH=. python3 -m benchmarks gpu_diagnose [--out FILE]`` (the printed
facts go to ``--out`` or to ``benchmarks/results/gpu_diagnose-DATE-MACHINE.{json,md}``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Facts of onnxruntime-gpu fp16guard relies on: FP16 node placement, CPU fallback, fused RMSNorm"


def placement_facts() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import onnxruntime as ort

    from test_gpu_ort import _CPU_ONLY_CANDIDATES, _fp16_chain
    from fp16guard.runners.onnxrt import CPU, CUDA, OnnxRuntimeRunner

    x = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    relu = _fp16_chain("Relu", {})
    for op, attrs in [("Relu", {})] + _CPU_ONLY_CANDIDATES:
        model = relu if op == "Relu" else _fp16_chain(op, attrs)
        line = f"[placement] {op}: "
        try:
            with OnnxRuntimeRunner(model, providers=[CUDA, CPU], record_placement=True) as r:
                r.infer({"x": x})
                line += "profiler " + ", ".join(f"{k}={v['provider'][:4]}/{v['op_type']}" for k, v in r.node_placement().items())
        except Exception as exc:
            line += f"cannot run: {str(exc)[:160]}"
        for providers in ([CUDA, CPU], [CUDA]):
            so = ort.SessionOptions()
            so.log_severity_level = 4
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            try:
                ort.InferenceSession(model.SerializeToString(), so, providers=providers)
                line += f" | oracle({len(providers)} EPs): accepted"
            except Exception as exc:
                line += f" | oracle({len(providers)} EPs): REFUSED {str(exc).strip().splitlines()[0][:220]}"
        with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as fh:
            fh.write(model.SerializeToString())
        code = (
            "import onnxruntime as ort; so = ort.SessionOptions(); so.log_severity_level = 0; "
            f"ort.InferenceSession({fh.name!r}, so, providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        placed = [l.split("]", 1)[-1].strip() for l in (proc.stderr + proc.stdout).splitlines() if "placed on" in l or "Node(s)" in l or l.strip().startswith(("Cast (", "Mul (", f"{op} ("))]
        line += " | verbose: " + " ; ".join(placed[:6])
        print(line, flush=True)


def rmsnorm_facts() -> None:
    from fp16guard import examples
    from fp16guard.graph.convert import to_mixed_precision
    import onnx
    import onnxruntime as ort

    from fp16guard.runners.onnxrt import CPU, CUDA, OnnxRuntimeRunner

    model = examples.build_model("rmsnorm")
    feeds = examples.sample_inputs("rmsnorm", 16, seed=3)
    with OnnxRuntimeRunner(model, providers=[CPU]) as r:
        ref = r.infer(feeds)
    cand = to_mixed_precision(model, set())
    for level in ("all", "basic", "disable"):
        with OnnxRuntimeRunner(cand, providers=[CUDA, CPU], optimization=level) as r:
            out = r.infer(feeds)
        for name, value in out.items():
            v = value.astype(np.float64)
            nf = int(v.size - np.isfinite(v).sum())
            fin = np.isfinite(v)
            rel = float(np.abs(v[fin] - ref[name][fin]).max() / np.abs(ref[name]).max()) if fin.any() else float("inf")
            print(f"[rmsnorm all-FP16] optimization={level}: output {name}: nonfinite {nf}/{v.size}, max rel error {rel:.3g}", flush=True)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    path = os.path.join(tempfile.mkdtemp(), "opt.onnx")
    so.optimized_model_filepath = path
    ort.InferenceSession(cand.SerializeToString(), so, providers=[CUDA, CPU])
    ops = [n.op_type for n in onnx.load(path).graph.node]
    print(f"[rmsnorm all-FP16] optimised graph (level all) ops: {ops}", flush=True)



def main(argv: list[str] | None = None) -> int:
    """Print both sets of facts and keep them in a results file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks gpu_diagnose", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the printed facts here (default: the results folder)")
    args = parser.parse_args(argv)
    log = bench_results.Log(bench_results.context("gpu_diagnose", argv))
    with log.capture():
        rmsnorm_facts()
        placement_facts()
    log.save(args.out, None, {"facts": log.lines})
    return 0
