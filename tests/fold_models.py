"""Tiny models for the scale-folding tests, built in code, and the check they all go through.

:func:`fold_check` measures statistics with onnxruntime (every tensor exposed), plans with a strategy,
builds the mixed model, and runs it through FP16 storage emulation on onnxruntime against the
FP32 model on fresh data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.convert import to_mixed_precision
from fp16guard.graph.emulate import emulate_fp16_storage
from fp16guard.io.model import normalize_model
from fp16guard.plan.strategies import plan_model
from fp16guard.settings import PlanSettings

F = TensorProto.FLOAT


class Net:
    """Collects nodes and initializers; every node named."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, name: str, inputs, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def conv(self, name: str, x: str, cin: int, cout: int, gain: float, bias: float = 0.5, k: int = 3) -> str:
        w = self.rng.standard_normal((cout, cin, k, k)) * gain * np.sqrt(2.0 / (cin * k * k))
        b = self.rng.standard_normal(cout) * bias
        return self.op("Conv", name, [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)], kernel_shape=[k, k], pads=[k // 2] * 4)

    def fill(self, name: str, shape, value: float) -> str:
        """A ConstantOfShape node filling ``shape`` with ``value`` (how the ONNX project's light
        test CNNs store their weights)."""
        dims = self.const_int(f"{name}.shape", list(shape))
        element = numpy_helper.from_array(np.asarray([value], dtype=np.float32), "")
        self.nodes.append(helper.make_node("ConstantOfShape", [dims], [name], name=f"{name}.fill", value=element))
        return name

    def const_int(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def gemm(self, name: str, x: str, fin: int, fout: int, gain: float, bias: float = 0.5) -> str:
        w = self.rng.standard_normal((fout, fin)) * gain * np.sqrt(2.0 / fin)
        return self.op("Gemm", name, [x, self.const(f"{name}.w", w), self.const(f"{name}.b", self.rng.standard_normal(fout) * bias)], transB=1)

    def model(self, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return normalize_model(model)


def io(name: str, *dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, list(dims))


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the FP16 rounding honest
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def measure(tmp_path: Path, model: onnx.ModelProto, feeds: dict, smallest: bool = False, mean: bool = False):
    """A statistics table (``tensor``, ``min``, ``max``, ``max_abs``, ``nonfinite``, with
    ``smallest`` the ``min_nonzero_abs`` column, with ``mean`` the ``abs_sum`` and ``examined``
    columns) of every float tensor of ``model`` on ``feeds``, measured by onnxruntime with every
    tensor exposed as an output (fine for tiny models)."""
    import pyarrow as pa

    from fp16guard.graph.info import tensor_types

    types = tensor_types(model)
    names = [v.name for v in model.graph.input] + [o for n in model.graph.node for o in n.output if o and types.is_float32(o)]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    declared = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_tensor_value_info(n, F, None) for n in names if n not in declared and n not in feeds)
    values = dict(zip([o.name for o in exposed.graph.output], run(exposed, feeds)))
    values.update(feeds)
    rows = []
    for n in names:
        v = np.asarray(values[n], dtype=np.float64)
        finite = v[np.isfinite(v)]
        nz = np.abs(finite[finite != 0])
        row = {"tensor": n, "min": float(finite.min()), "max": float(finite.max()), "max_abs": float(np.abs(finite).max()), "nonfinite": int(v.size - finite.size)}
        if smallest:
            row["min_nonzero_abs"] = float(nz.min()) if nz.size else float("inf")
        if mean:
            row.update(abs_sum=float(np.abs(finite).sum()), examined=int(finite.size))
        rows.append(row)
    return pa.Table.from_pylist(rows)


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30))


def fold_check(tmp_path: Path, model: onnx.ModelProto, calib: dict, holdout: dict, strategy: str = "fold", threshold: float = 10000.0, stats=None):
    """Plan ``model`` with ``strategy``, build, emulate FP16 storage, compare with FP32.

    Returns ``(plan, folded FP32 model, {"exact": rel error of the folded FP32 model,
    "mixed": rel error of the emulated mixed model, "pin_mixed": same for the pin plan})``.
    """
    stats = measure(tmp_path, model, calib) if stats is None else stats
    settings = PlanSettings(threshold=threshold, strategy=strategy)
    plan, folded = plan_model(model, stats, settings)
    ref = run(model, holdout)
    exact = max(rel_error(r, g) for r, g in zip(ref, run(folded, holdout)))
    mixed = emulate_fp16_storage(to_mixed_precision(folded, {e["name"] for e in plan["fp32_nodes"]}))
    err = max(rel_error(r, g) for r, g in zip(ref, run(mixed, holdout)))
    pin_plan, _ = plan_model(model, stats, PlanSettings(threshold=threshold, strategy="pin"))
    pin_mixed = emulate_fp16_storage(to_mixed_precision(model, {e["name"] for e in pin_plan["fp32_nodes"]}))
    pin_err = max(rel_error(r, g) for r, g in zip(ref, run(pin_mixed, holdout)))
    return plan, folded, {"exact": exact, "mixed": err, "pin_mixed": pin_err, "pin_plan": pin_plan}


# ------------------------------------------------------------------------------------------
# VGG-19-shaped CNN whose later layers overflow FP16: the benchmark's builder, so the test and
# benchmarks/fold_latency.py measure the same network (that script is self-contained by design).


def _benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fold_latency.py"
    spec = importlib.util.spec_from_file_location("fold_latency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vgg19_overflow(resolution: int = 32, width_div: int = 8, gain: float = 1.9, seed: int = 0) -> onnx.ModelProto:
    """:func:`benchmarks.fold_latency.build_vgg19_overflow`, names normalised as load_model does."""
    return normalize_model(_benchmark().build_vgg19_overflow(resolution, width_div, gain, seed))
