"""NaN/inf that the model masks before its outputs is data: counted per tensor and shard, and the
nodes touching it stay FP32 (rule ``masked_nonfinite``). Real onnxruntime on tiny models."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import NonFiniteError
from fp16guard.io.model import load_model
from fp16guard.io.shards import ShardRef
from fp16guard.plan.planner import make_plan
from fp16guard.settings import PlanSettings
from fp16guard.stats.collect import StatsSession, reduce_stats

F = TensorProto.FLOAT


def _save(model, path):
    onnx.save(model, str(path))
    return path


def _shard(path, **arrays):
    np.savez(path, **arrays)
    return ShardRef(str(path), str(path))


def _div_no_nan(path):
    """TensorFlow's div_no_nan: q = x / y, out = Where(y == 0, 0, q) * 2."""
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [
            helper.make_node("Div", ["x", "y"], ["q"], name="div"),
            helper.make_node("Equal", ["y", "zero"], ["y_is_zero"], name="is_zero"),
            helper.make_node("Where", ["y_is_zero", "zero", "q"], ["safe"], name="div_no_nan"),
            helper.make_node("Mul", ["safe", "two"], ["out"], name="scale"),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 4]), helper.make_tensor_value_info("y", F, ["N", 4])],
        [helper.make_tensor_value_info("out", F, ["N", 4])],
        [zero, two],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_div_no_nan_is_counted_per_shard_and_its_nodes_stay_fp32(tmp_path):
    model = _div_no_nan(tmp_path / "div.onnx")
    clean = _shard(tmp_path / "a.npz", x=np.ones((2, 4), np.float32), y=np.full((2, 4), 2.0, np.float32))
    y = np.array([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 1.0, 1.0]], np.float32)
    x = np.array([[1.0, 3.0, 1.0, 0.0], [5.0, 1.0, 1.0, 1.0]], np.float32)  # 3/0 = inf, 0/0 = NaN, 5/0 = inf
    masked = _shard(tmp_path / "b.npz", x=x, y=y)
    with StatsSession(model) as session:
        tables = [session.run(clean), session.run(masked)]
    assert [r["nonfinite"] for r in tables[1].to_pylist() if r["tensor"] == "q"] == [3]
    rows = {r["tensor"]: r for r in reduce_stats(tables).to_pylist()}
    assert rows["q"]["nonfinite"] == 3 and rows["q"]["nonfinite_shard"] == masked.name
    assert rows["safe"]["nonfinite"] == 0 and rows["out"]["nonfinite"] == 0 and rows["out"]["max_abs"] == 2.0
    plan = make_plan(load_model(model), reduce_stats(tables), PlanSettings())
    reasons = {e["name"]: e["reason"] for e in plan.fp32_nodes}
    assert reasons == {"div": "masked_nonfinite", "div_no_nan": "masked_nonfinite"}
    assert "3 NaN/inf" in " ".join(next(e for e in plan.fp32_nodes if e["name"] == "div")["details"])
    assert "scale" not in reasons  # reads only the masked, finite result


def test_nonfinite_reaching_an_output_is_still_a_data_error(tmp_path):
    model = _div_no_nan(tmp_path / "div.onnx")
    m = onnx.load(str(model))
    m.graph.output.append(helper.make_tensor_value_info("q", F, ["N", 4]))  # the unmasked quotient is an output too
    exposed = _save(m, tmp_path / "exposed.onnx")
    bad = _shard(tmp_path / "b.npz", x=np.ones((1, 4), np.float32), y=np.zeros((1, 4), np.float32))
    with StatsSession(exposed) as session, pytest.raises(NonFiniteError, match=r"b\.npz: FP32 output 'q' holds 4 NaN/inf"):
        session.run(bad)


def _masked_attention(path):
    """Scores q.k^T plus an additive mask Where(keep, 0, -inf) built from a bool input, Softmax, @ v."""
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    ninf = numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf")
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
            helper.make_node("Unsqueeze", ["keep", "axes"], ["keep3"], name="unsqueeze"),
            helper.make_node("Where", ["keep3", "zero", "ninf"], ["mask"], name="mask"),
            helper.make_node("Add", ["scores", "mask"], ["masked"], name="add_mask"),
            helper.make_node("Softmax", ["masked"], ["attn"], name="softmax", axis=-1),
            helper.make_node("MatMul", ["attn", "v"], ["out"], name="context"),
        ],
        "g",
        [
            helper.make_tensor_value_info("q", F, ["N", 3, 8]),
            helper.make_tensor_value_info("k", F, ["N", 3, 8]),
            helper.make_tensor_value_info("v", F, ["N", 3, 8]),
            helper.make_tensor_value_info("keep", TensorProto.BOOL, ["N", 3]),
        ],
        [helper.make_tensor_value_info("out", F, ["N", 3, 8])],
        [zero, ninf, numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_additive_minus_inf_attention_mask_runs_and_keeps_the_masked_nodes_fp32(tmp_path):
    model = _masked_attention(tmp_path / "attn.onnx")
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 3, 8)).astype(np.float32) for _ in range(3))
    keep = np.array([[True, True, False], [True, False, False]])
    ref = _shard(tmp_path / "s.npz", q=q, k=k, v=v, keep=keep)
    with StatsSession(model) as session:
        rows = {r["tensor"]: r for r in reduce_stats([session.run(ref)]).to_pylist()}
    assert rows["mask"]["nonfinite"] == 3  # 3 masked keys of 6 ([N, 1, 3])
    assert rows["masked"]["nonfinite"] == 3 * 3 and rows["out"]["nonfinite"] == 0  # each on 3 query rows
    assert np.isfinite(rows["attn"]["max_abs"]) and rows["attn"]["nonfinite"] == 0
    with StatsSession(model) as session:
        plan = make_plan(load_model(model), reduce_stats([session.run(ref)]), PlanSettings())
    reasons = {e["name"]: e["reasons"] for e in plan.fp32_nodes}
    assert set(reasons) == {"mask", "add_mask", "softmax"}  # the scores, context and transposes stay FP16
    assert all("masked_nonfinite" in codes for codes in reasons.values())
    assert reasons["mask"][0] == "initializer_out_of_range"  # it also reads the -inf initializer
