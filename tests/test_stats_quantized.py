"""Quantised models and contrib-domain ops (docs/NUMERICS.md): integer tensors are neither measured
nor converted, com.microsoft ops stay FP32, the float tensors around them are measured. The model
is quantised by onnxruntime.quantization.quantize_dynamic from a small float model built here."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.convert import to_mixed_precision
from fp16guard.graph.instrument import constant_tensors
from fp16guard.io.model import load_model
from fp16guard.io.shards import ShardRef
from fp16guard.plan.planner import make_plan
from fp16guard.runners.onnxrt import OnnxRuntimeRunner
from fp16guard.settings import PlanSettings
from fp16guard.stats.collect import StatsSession, reduce_stats

F = TensorProto.FLOAT
H, I = 8, 6


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """LSTM -> Squeeze -> MatMul (logits) and Conv -> Relu, dynamically quantised (uint8 weights):
    DynamicQuantizeLSTM (com.microsoft), DynamicQuantizeLinear, MatMulInteger, ConvInteger."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path_factory.mktemp("quant")
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(1, 4 * H, I)).astype(np.float32) * 0.5, "W"),
        numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(np.float32) * 0.5, "R"),
        numpy_helper.from_array(rng.normal(size=(H, 5)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32) * 0.3, "CW"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["Y", "Y_h"], name="lstm", hidden_size=H),
        helper.make_node("Squeeze", ["Y_h", "axes"], ["h"], name="squeeze"),
        helper.make_node("MatMul", ["h", "W2"], ["logits"], name="fc"),
        helper.make_node("Conv", ["img", "CW"], ["feat"], name="conv"),
        helper.make_node("Relu", ["feat"], ["out2"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, [5, "N", I]), helper.make_tensor_value_info("img", F, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", F, ["N", 5]), helper.make_tensor_value_info("out2", F, ["N", 4, 6, 6])],
        inits,
    )
    float_path, quant_path = folder / "float.onnx", folder / "quant.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(float_path))
    quantize_dynamic(str(float_path), str(quant_path), weight_type=QuantType.QUInt8, op_types_to_quantize=["LSTM", "MatMul", "Conv"])
    shard = folder / "s.npz"
    np.savez(shard, x=rng.normal(size=(5, 3, I)).astype(np.float32), img=rng.normal(size=(3, 1, 8, 8)).astype(np.float32))
    return quant_path, ShardRef(str(shard), str(shard))


def test_integer_tensors_are_not_measured_and_float_ones_around_contrib_ops_are(quantised):
    path, ref = quantised
    model = load_model(path)
    ops = {n.op_type: n.domain for n in model.graph.node}
    assert ops["DynamicQuantizeLSTM"] == "com.microsoft" and {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"} <= set(ops)
    with StatsSession(path) as session:
        rows = {r["tensor"]: r for r in reduce_stats([session.run(ref)]).to_pylist()}
    integer = {o for n in model.graph.node if n.op_type in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear") for o in n.output}
    assert not integer & {k for k in rows if not k.endswith("_scale")}  # int32 accumulators, uint8 values, zero points
    assert {"Y", "Y_h", "h", "logits", "feat", "out2"} <= set(rows)  # float, including the contrib op's outputs
    assert all(r["nonfinite"] == 0 and r["abs_sum"] > 0 for r in rows.values())


def test_plan_keeps_contrib_and_quantising_nodes_fp32_and_leaves_integer_ones_alone(quantised):
    path, ref = quantised
    model = load_model(path)
    with StatsSession(path) as session:
        stats = reduce_stats([session.run(ref)])
    plan = make_plan(model, stats, PlanSettings())
    by_op = {}
    for entry in plan.fp32_nodes:
        by_op.setdefault(entry["op_type"], set()).update(entry["reasons"])
    assert by_op["DynamicQuantizeLSTM"] == {"custom_domain"}
    assert "no_fp16_kernel" in by_op["DynamicQuantizeLinear"]  # float input, no float16 kernel
    assert "MatMulInteger" not in by_op and "ConvInteger" not in by_op  # integer only: neutral
    assert plan.counts["neutral"] >= 2
    # The mixed model keeps integer weights as they are and still computes what FP32 computes.
    mixed = to_mixed_precision(model, plan.fp32_names)
    kinds = {t.name: t.data_type for t in mixed.graph.initializer}
    assert kinds["W2_quantized"] == TensorProto.UINT8 and kinds["CW_quantized"] == TensorProto.UINT8
    feeds = dict(np.load(ref.path))
    with OnnxRuntimeRunner(model) as fp32, OnnxRuntimeRunner(mixed) as candidate:
        want, got = fp32.infer(feeds), candidate.infer(feeds)
    for name in ("logits", "out2"):
        err = np.max(np.abs(got[name].astype(np.float32) - want[name])) / np.max(np.abs(want[name]))
        assert err < 0.02, name


def test_dequantised_stored_weights_are_constant_and_measured_once(tmp_path):
    """QDQ form: W = DequantizeLinear(int8 weight, scale, zero point) does not depend on the input."""
    q = numpy_helper.from_array(np.arange(-6, 6, dtype=np.int8).reshape(4, 3), "wq")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "ws")
    zp = numpy_helper.from_array(np.array(0, np.int8), "wz")
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq"), helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info("y", F, ["N", 3])],
        [q, scale, zp],
    )
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    np.savez(tmp_path / "s.npz", x=np.ones((2, 4), np.float32))
    assert constant_tensors(load_model(path)) == {"w"}
    with StatsSession(path) as session:
        assert [session.tensors[k].name for k in session._const] == ["w"]
        rows = {r["tensor"]: r for r in session.run(ShardRef(str(tmp_path / "s.npz"), str(tmp_path / "s.npz"))).to_pylist()}
    assert rows["w"]["min"] == -3.0 and rows["w"]["max"] == 2.5 and rows["w"]["examined"] == 12
