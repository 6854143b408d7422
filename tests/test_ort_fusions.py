"""Verification emulates the graph onnxruntime runs: its weight fusions store products in FP16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.emulate import emulate_fp16_storage
from fp16guard.io.shards import discover_shards
from fp16guard.graph.ort_fusions import fuse_like_onnxruntime
from fp16guard.verify.compare import verify

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def _conv_then_mul(dtype: int) -> onnx.ModelProto:
    """y = Conv(x, W) * 2**-14 with W = 2e-4 everywhere: exact in FP32 and with FP16 storage, but
    onnxruntime's ConvMulFusion makes the FP16 weights W * 2**-14 (0.2 of FP16's smallest
    subnormal: 0)."""
    np_type = np.float16 if dtype == H else np.float32
    inits = [numpy_helper.from_array(np.full((4, 4, 3, 3), 2e-4, np_type), "w"), numpy_helper.from_array(np.asarray(2.0**-14, np_type), "k")]
    nodes = [helper.make_node("Conv", ["xh", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), helper.make_node("Mul", ["c", "k"], ["yh"], name="scale")]
    if dtype == H:
        nodes = [helper.make_node("Cast", ["x"], ["xh"], name="in", to=H)] + nodes + [helper.make_node("Cast", ["yh"], ["y"], name="out", to=F)]
    else:
        nodes = [helper.make_node("Identity", ["x"], ["xh"], name="in")] + nodes + [helper.make_node("Identity", ["yh"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 4, 6, 6])], [helper.make_tensor_value_info("y", F, ["N", 4, 6, 6])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].astype(np.float64)


def test_fp16_weight_fusion_is_seen_by_verification(tmp_path):
    x = (np.random.default_rng(0).standard_normal((2, 4, 6, 6)) * 5000).astype(np.float32)
    ref = _run(_conv_then_mul(F), x)
    candidate = _conv_then_mul(H)

    def err(model):
        return float(np.abs(_run(model, x) - ref).max() / np.abs(ref).max())

    assert err(emulate_fp16_storage(candidate)) < 2e-3  # the unrewritten graph emulates fine
    fused, names = fuse_like_onnxruntime(candidate)
    assert names == ["conv"] and not any(n.op_type == "Mul" for n in fused.graph.node)  # the Mul went into the weights
    assert err(emulate_fp16_storage(fused)) > 0.5  # ... and the weights became 0
    assert err(candidate) > 0.5  # which is what onnxruntime itself computes (CPU provider, default level)

    np.savez(tmp_path / "h.npz", x=x)
    report = verify(_conv_then_mul(F), candidate, discover_shards([tmp_path / "h.npz"], "holdout"))
    assert report["emulated"] and not report["passed"]
    assert "weight fusions of 1 Conv" in report["execution"]


def _fused_by_onnxruntime(model, tmp_path) -> bool:
    """Whether onnxruntime (CPU provider, basic level) fused the Conv with the node after it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    return "Mul" not in ops and "Add" not in ops and "BatchNormalization" not in ops


def _conv_then(op: str, shape, dtype=H):
    np_type = np.float16 if dtype == H else np.float32
    inits = [numpy_helper.from_array(np.full((4, 4, 3, 3), 0.5, np_type), "w")]
    if op == "BatchNormalization":
        inits += [numpy_helper.from_array(np.full(4, v, np_type), n) for n, v in (("s", 2.0), ("b", 0.1), ("m", 0.2), ("v", 4.0))]
        second = helper.make_node(op, ["c", "s", "b", "m", "v"], ["y"], name="second")
    else:
        inits.append(numpy_helper.from_array(np.full(shape, 0.5, np_type), "k"))
        second = helper.make_node(op, ["c", "k"], ["y"], name="second")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), second]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [1, 4, 6, 6])], [helper.make_tensor_value_info("y", dtype, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    "op, shape",
    [("Mul", ()), ("Mul", (1,)), ("Mul", (4, 1, 1)), ("Mul", (1, 4, 1, 1)), ("Add", ()), ("Add", (4, 1, 1)), ("Add", (1, 4, 1, 1)), ("BatchNormalization", None)],
)
def test_the_pass_fuses_what_onnxruntime_fuses(tmp_path, op, shape):
    """Same decisions as onnxruntime on the patterns it was seen to fuse or leave (a Mul by a
    one-element vector and an Add of a scalar stay), with the same values: the pass's FP16
    weights give what onnxruntime computes."""
    model = _conv_then(op, shape)
    fused, names = fuse_like_onnxruntime(model)
    assert bool(names) == _fused_by_onnxruntime(model, tmp_path)
    x = {"x": np.random.default_rng(2).standard_normal((1, 4, 6, 6)).astype(np.float16)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_array_equal(got, want)


def test_fp32_convs_are_left_alone():
    assert fuse_like_onnxruntime(_conv_then("Mul", (), dtype=F))[1] == []
