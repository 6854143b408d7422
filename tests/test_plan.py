"""Plan rules: one test per rule, on tiny models built in code with statistics measured by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import ConfigError, DataError
from fp16guard.plan.planner import REASONS, Plan, make_plan
from fp16guard.settings import PlanSettings

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _io(name, *dims, dtype=F):
    return helper.make_tensor_value_info(name, dtype, list(dims))


def _init(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def measured_stats(model: onnx.ModelProto, feeds: dict) -> pa.Table:
    """max |x| and non-finite counts of every float graph input and node output, by exposing them."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    names = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output if o]
    names = [n for n in names if types.get(n) == F]
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_tensor_value_info(n, F, None) for n in names if n not in present)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    return pa.table(
        {
            "tensor": names,
            "max_abs": [float(np.max(np.abs(values[n]))) if values[n].size else 0.0 for n in names],
            "nonfinite": [int(np.sum(~np.isfinite(values[n]))) for n in names],
        }
    )


def _entry(plan: Plan, name: str) -> dict:
    matches = [e for e in plan.fp32_nodes if e["name"] == name]
    assert matches, f"{name} not FP32 in plan: {plan.to_dict()}"
    return matches[0]


def _x(n=4, d=8, scale=1.0, seed=0):
    return {"x": (np.random.default_rng(seed).standard_normal((n, d)) * scale).astype(np.float32)}


def test_input_only_large_softmax_stays_fp32():
    # Logits ~1e5 (from a large scale), Softmax output <= 1: only the input rule catches Softmax.
    model = _model(
        [helper.make_node("Mul", ["x", "scale"], ["logits"], name="scale"), helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=-1)],
        [_io("x", 4, 8)],
        [_io("p", 4, 8)],
        [_init("scale", [3.0e4])],
    )
    stats = measured_stats(model, _x())
    plan = make_plan(model, stats, PlanSettings())
    assert _entry(plan, "scale")["reason"] == "output_above_threshold"
    soft = _entry(plan, "softmax")
    assert soft["reason"] == "input_above_threshold"
    assert "logits" in soft["details"][0] and "10000" in soft["details"][0]
    assert "output_above_threshold" not in soft["reasons"]


def test_output_above_threshold_only():
    model = _model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Mul", ["r", "k"], ["y"], name="big")],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [_init("k", [2.0e4])],
    )
    plan = make_plan(model, measured_stats(model, _x()), PlanSettings())
    assert _entry(plan, "big")["reasons"] == ["output_above_threshold"]
    assert plan.fp32_names == {"big"}
    assert plan.counts == {"nodes": 2, "fp32": 1, "fp16": 1, "neutral": 0}


def test_threshold_setting_is_used():
    model = _model([helper.make_node("Mul", ["x", "k"], ["y"], name="m")], [_io("x", 4, 8)], [_io("y", 4, 8)], [_init("k", [100.0])])
    stats = measured_stats(model, _x())
    assert make_plan(model, stats, PlanSettings(threshold=10000)).fp32_names == set()
    assert make_plan(model, stats, PlanSettings(threshold=50)).fp32_names == {"m"}


def test_initializer_beyond_fp16_range():
    # x is tiny, so x * 1e5 stays small: only the initializer rule can keep "gain" in FP32.
    model = _model(
        [helper.make_node("Mul", ["x", "gain"], ["g"], name="gain"), helper.make_node("Mul", ["g", "small"], ["y"], name="scale")],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [_init("gain", [1.0e5]), _init("small", [1e-3])],
    )
    plan = make_plan(model, measured_stats(model, _x(scale=1e-3)), PlanSettings())
    entry = _entry(plan, "gain")
    assert entry["reasons"] == ["initializer_out_of_range"]
    assert "'gain'" in entry["details"][0] and "100000" in entry["details"][0]
    assert plan.fp32_names == {"gain"}


def test_constant_node_beyond_fp16_range():
    big = numpy_helper.from_array(np.array([7.0e4], np.float32), "v")
    zero_shape = numpy_helper.from_array(np.array([4, 8], np.int64), "s")
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], name="const", value=big),
            helper.make_node("Sub", ["x", "c"], ["d"], name="sub"),
            helper.make_node("ConstantOfShape", ["s"], ["fill"], name="fill", value=numpy_helper.from_array(np.array([1e5], np.float32))),
            helper.make_node("Add", ["d", "fill"], ["y"], name="add"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [zero_shape],
    )
    # Even with no usable statistics for the constants (threshold at the FP16 max), the value rule fires.
    stats = measured_stats(model, _x())
    plan = make_plan(model, stats, PlanSettings(threshold=65504))
    assert "constant_out_of_range" in _entry(plan, "const")["reasons"]
    assert "constant_out_of_range" in _entry(plan, "sub")["reasons"]
    assert "constant_out_of_range" in _entry(plan, "fill")["reasons"]
    assert "constant_out_of_range" in _entry(plan, "add")["reasons"]


def _two_relu_model():
    return _model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="block0/relu"),
            helper.make_node("Sigmoid", ["a"], ["b"], name="block1/sigmoid"),
            helper.make_node("Relu", ["b"], ["y"], name="block1/relu"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
    )


def test_force_fp32_by_name_and_by_op_type():
    model = _two_relu_model()
    stats = measured_stats(model, _x())
    by_name = make_plan(model, stats, PlanSettings(force_fp32_nodes=r"^block1/"))
    assert by_name.fp32_names == {"block1/sigmoid", "block1/relu"}
    assert {e["reason"] for e in by_name.fp32_nodes} == {"forced_name"}
    by_op = make_plan(model, stats, PlanSettings(force_fp32_ops=["Sigmoid"]))
    assert by_op.fp32_names == {"block1/sigmoid"}
    assert _entry(by_op, "block1/sigmoid")["reason"] == "forced_op_type"


def test_force_fp16_overrides_data_and_user_rules_and_is_recorded():
    model = _model(
        [helper.make_node("Mul", ["x", "k"], ["l"], name="scale"), helper.make_node("Softmax", ["l"], ["y"], name="softmax")],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [_init("k", [3.0e4])],
    )
    stats = measured_stats(model, _x())
    plan = make_plan(model, stats, PlanSettings(force_fp16_nodes="^softmax$", force_fp32_ops=["Softmax"]))
    assert plan.fp32_names == {"scale"}
    (forced,) = plan.forced_fp16
    assert forced["name"] == "softmax" and forced["applied"] is True
    assert set(forced["overridden"]) == {"forced_op_type", "input_above_threshold"}
    assert plan.counts["fp16"] == 1


def _if_model():
    then_g = helper.make_graph([helper.make_node("Relu", ["a"], ["t"], name="then_relu")], "then", [], [_io("t", 4, 8)])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e"], name="else_neg")], "else", [], [_io("e", 4, 8)])
    return _model(
        [
            helper.make_node("Sigmoid", ["x"], ["a"], name="sig"),
            helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
        ],
        [_io("x", 4, 8), _io("cond", dtype=TensorProto.BOOL)],
        [_io("y", 4, 8)],
    )


def test_subgraph_node_stays_fp32_and_force_fp16_cannot_override_it():
    model = _if_model()
    stats = measured_stats(model, {**_x(), "cond": np.array(True)})
    plan = make_plan(model, stats, PlanSettings(force_fp16_nodes="branch"))
    assert plan.fp32_names == {"branch"}
    assert _entry(plan, "branch")["reason"] == "has_subgraph"
    assert plan.forced_fp16[0]["applied"] is False


def test_custom_domain_stays_fp32():
    model = _model([helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Gelu", ["a"], ["y"], name="gelu", domain="com.microsoft")], [_io("x", 4, 8)], [_io("y", 4, 8)], extra_opsets=[("com.microsoft", 1)])
    stats = pa.table({"tensor": ["x", "a", "y"], "max_abs": [1.0, 1.0, 1.0], "nonfinite": [0, 0, 0]})
    plan = make_plan(model, stats, PlanSettings())
    assert plan.fp32_names == {"gelu"}
    assert _entry(plan, "gelu")["reason"] == "custom_domain"


def test_op_without_fp16_schema_stays_fp32():
    # Celu-12 allows only tensor(float) for T.
    model = _model([helper.make_node("Celu", ["x"], ["a"], name="celu"), helper.make_node("Relu", ["a"], ["y"], name="relu")], [_io("x", 4, 8)], [_io("y", 4, 8)])
    plan = make_plan(model, measured_stats(model, _x()), PlanSettings())
    assert plan.fp32_names == {"celu"}
    entry = _entry(plan, "celu")
    assert entry["reason"] == "no_fp16_kernel" and "float16" in entry["details"][0]


def test_missing_statistics_keep_node_fp32():
    model = _two_relu_model()
    stats = measured_stats(model, _x())
    partial = stats.filter(pc.not_equal(stats["tensor"], "b"))
    plan = make_plan(model, partial, PlanSettings())
    assert plan.fp32_names == {"block1/sigmoid", "block1/relu"}
    assert {e["reason"] for e in plan.fp32_nodes} == {"no_statistics"}


def test_nonfinite_statistics_count_as_out_of_range():
    model = _two_relu_model()
    stats = pa.table({"tensor": ["x", "a", "b", "y"], "max_abs": [1.0, 1.0, float("nan"), 1.0], "nonfinite": [0, 0, 0, 0]})
    assert make_plan(model, stats, PlanSettings()).fp32_names == {"block1/sigmoid", "block1/relu"}


def test_shape_and_integer_nodes_are_neutral():
    model = _model(
        [
            helper.make_node("Shape", ["x"], ["s"], name="shape"),
            helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
            helper.make_node("Relu", ["r"], ["y"], name="relu"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
    )
    big = pa.table({"tensor": ["x", "r", "y"], "max_abs": [5e4, 5e4, 5e4], "nonfinite": [0, 0, 0]})
    plan = make_plan(model, big, PlanSettings())
    assert plan.fp32_names == {"reshape", "relu"}
    assert plan.counts == {"nodes": 3, "fp32": 2, "fp16": 0, "neutral": 1}


def test_plan_json_round_trip_and_codes():
    model = _if_model()
    plan = make_plan(model, measured_stats(model, {**_x(), "cond": np.array(True)}), PlanSettings(force_fp32_ops=["Sigmoid"]))
    data = json.loads(json.dumps(plan.to_dict()))
    assert set(data) == {"threshold", "fp32_nodes", "forced_fp16", "counts"}
    for entry in data["fp32_nodes"]:
        assert {"name", "op_type", "outputs", "reason", "details"} <= set(entry)
        assert entry["reason"] in REASONS
    again = Plan.from_dict(data)
    assert again.fp32_names == plan.fp32_names == {"sig", "branch"}
    assert again.to_dict() == data


def test_bad_inputs_raise_user_errors():
    model = _two_relu_model()
    with pytest.raises(DataError, match="expected at least"):
        make_plan(model, pa.table({"tensor": ["x"]}), PlanSettings())
    with pytest.raises(ConfigError, match="threshold"):
        Plan.from_dict({"fp32_nodes": []})


def test_external_weights_are_read_from_the_model_folder(tmp_path):
    from fp16guard.io.model import load_model

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 8)).astype(np.float32)
    weight[3, 5] = -9.0e4
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [numpy_helper.from_array(weight, "w")],
    )
    stats = measured_stats(model, _x(scale=1e-3))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    graph_only = load_model(path, load_weights=False)
    assert graph_only.graph.initializer[0].data_location == TensorProto.EXTERNAL
    plan = make_plan(graph_only, stats, PlanSettings(), weights_dir=tmp_path)
    entry = _entry(plan, "mm")
    assert entry["reasons"] == ["initializer_out_of_range"] and "-9e+04" not in entry["details"][0] and "90000" in entry["details"][0]
    unread = make_plan(graph_only, stats, PlanSettings())
    assert _entry(unread, "mm")["reasons"] == ["no_statistics"]
