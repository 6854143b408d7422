"""Scale folding: one test per folding rule, each checking the folded model against FP32 with
real onnxruntime, and the built mixed model through FP16 storage emulation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from fold_models import Net, fold_check, io, measure, rel_error, run, vgg19_overflow
from fp16guard.errors import ConfigError
from fp16guard.graph.fold_batchnorm import fold_batchnorm
from fp16guard.graph.fold_scales import MAX_EXPONENT, TensorRange, apply_scales, solve_scales
from fp16guard.plan.strategies import model_for_plan, plan_model
from fp16guard.plan.strategies.fold import COMPUTE_OPS, compute_fp32
from fp16guard.settings import PlanSettings

def _rng(seed: int = 7) -> np.random.Generator:
    return np.random.default_rng(seed)


def _images(n=8, c=3, side=8, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, c, side, side)).astype(np.float32)}


def _fp32_compute(plan):
    return [e["name"] for e in plan["fp32_nodes"] if e["op_type"] in COMPUTE_OPS]


def test_homogeneous_chain_folds_into_weights(tmp_path):
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> Flatten -> Gemm, overflowing in the middle:
    the range rule pins the chain; folding scales the two Convs' weights and undoes it in the
    Gemm's, so everything runs in FP16 and nothing needs restoring."""
    net = Net(1)
    h = net.op("Relu", "relu1", [net.conv("conv1", "x", 3, 8, gain=3000.0)])
    h = net.op("MaxPool", "pool1", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = net.op("Relu", "relu2", [net.conv("conv2", h, 8, 8, gain=4.0)])
    h = net.op("Flatten", "flat", [h], axis=1)
    net.gemm("fc", h, 8 * 4 * 4, 10, gain=1e-3)
    net.nodes.append(helper.make_node("Identity", ["fc"], ["y"], name="out"))
    model = net.model([io("x", "N", 3, 8, 8)], [io("y", "N", 10)])

    plan, folded, res = fold_check(tmp_path, model, _images(), _images(seed=1))
    assert len(_fp32_compute(res["pin_plan"])) >= 3  # the range rule pins the overflowing chain
    assert _fp32_compute(plan) == [] and plan["fp32_nodes"] == []
    exps = plan["folding"]["exponents"]
    assert exps["conv1"] >= 1 and exps["conv2"] > exps["conv1"] and exps["relu2"] == exps["conv2"] and "fc" not in exps
    assert plan["folding"]["restores"] == []  # the Gemm's weights bring the scale back
    assert res["exact"] < 1e-6  # powers of two: the folded FP32 model computes the same
    assert res["mixed"] < 5e-3


def test_residual_add_operands_share_the_scale(tmp_path):
    """x -> conv_a -> relu_a -> conv_b; Add(relu_a, conv_b): both Add operands (and so the two
    Convs) get the same exponent, no converter is needed between them."""
    net = Net(2)
    a = net.op("Relu", "relu_a", [net.conv("conv_a", "x", 3, 8, gain=4000.0)])
    b = net.conv("conv_b", a, 8, 8, gain=1.0)
    s = net.op("Relu", "relu_s", [net.op("Add", "residual", [a, b])])
    net.conv("conv_c", s, 8, 4, gain=1e-3)
    net.nodes.append(helper.make_node("Identity", ["conv_c"], ["y"], name="out"))
    model = net.model([io("x", "N", 3, 8, 8)], [io("y", "N", 4, 8, 8)])

    plan, _, res = fold_check(tmp_path, model, _images(), _images(seed=1))
    exps = plan["folding"]["exponents"]
    assert exps["relu_a"] == exps["conv_b"] == exps["residual"] > 0
    assert plan["folding"]["rescales"] == [] and plan["folding"]["restores"] == []
    assert _fp32_compute(plan) == [] and len(_fp32_compute(res["pin_plan"])) >= 2
    assert res["exact"] < 1e-6 and res["mixed"] < 5e-3


def test_layer_normalization_absorbs_the_scale(tmp_path):
    """MatMul with outputs ~1e5 -> LayerNormalization: the norm is scale-invariant, so it reads the
    scaled tensor directly (epsilon divided by 4**e) and nothing is restored."""
    RNG = _rng()
    net = Net(3)
    w = net.const("w", RNG.standard_normal((16, 16)) * 3e4 / 4)
    h = net.op("MatMul", "proj", ["x", w])
    n = net.op("LayerNormalization", "norm", [h, net.const("g", np.ones(16)), net.const("b", np.zeros(16))], axis=-1, epsilon=1e-5)
    net.op("MatMul", "head", [n, net.const("w2", RNG.standard_normal((16, 4)) * 0.25)])
    net.nodes.append(helper.make_node("Identity", ["head"], ["y"], name="out"))
    model = net.model([io("x", "N", 6, 16)], [io("y", "N", 6, 4)])
    feeds = {"x": RNG.standard_normal((8, 6, 16)).astype(np.float32)}

    plan, folded, res = fold_check(tmp_path, model, feeds, {"x": RNG.standard_normal((8, 6, 16)).astype(np.float32)})
    e = plan["folding"]["exponents"]["proj"]
    assert e >= 2 and "norm" not in plan["folding"]["exponents"]
    assert plan["folding"]["restores"] == [] and plan["fp32_nodes"] == []
    assert [n["name"] for n in res["pin_plan"]["fp32_nodes"]] == ["proj", "norm"]
    eps = next(a.f for n in folded.graph.node if n.name == "norm" for a in n.attribute if a.name == "epsilon")
    assert eps == pytest.approx(1e-5 / 4**e, rel=1e-6)
    assert res["exact"] < 1e-5 and res["mixed"] < 5e-3


def test_rms_style_normalisation_absorbs_through_its_arithmetic(tmp_path):
    """T5 RMSNorm as Pow/ReduceMean/Add eps/Sqrt/Div: exponents flow through the arithmetic
    (Pow doubles, Sqrt halves, Div subtracts) so the Div comes out unscaled; Pow and ReduceMean,
    pinned by the range rule, run in FP16."""
    from fp16guard import examples
    from fp16guard.io.model import normalize_model

    model = normalize_model(examples.build_model("rmsnorm"))
    plan, _, res = fold_check(tmp_path, model, examples.sample_inputs("rmsnorm", 16, seed=1), examples.sample_inputs("rmsnorm", 16, seed=2))
    exps = plan["folding"]["exponents"]
    assert exps["norm/Pow_out"] == 2 * exps["proj/MatMul_out"] and exps["norm/Sqrt_out"] == exps["proj/MatMul_out"]
    assert "norm/Div_out" not in exps
    pinned = {n["name"] for n in plan["fp32_nodes"]}
    assert {"norm/Pow", "norm/ReduceMean"} <= {n["name"] for n in res["pin_plan"]["fp32_nodes"]}
    assert not pinned & {"norm/Pow", "norm/ReduceMean", "proj/MatMul", "norm/Div"}
    assert res["exact"] < 1e-5 and res["mixed"] < 5e-3


def test_batchnorm_folds_into_the_conv(tmp_path):
    """Conv -> BatchNormalization -> Relu: the BN's affine map goes into the Conv's weights and
    bias, the BN node disappears, the Conv writes the BN's output tensor, outputs unchanged."""
    RNG = _rng()
    net = Net(4)
    c = net.conv("conv", "x", 3, 6, gain=1.0)
    bn = [net.const(f"bn.{k}", v) for k, v in (("s", RNG.uniform(0.5, 2, 6)), ("b", RNG.normal(0, 1, 6)), ("m", RNG.normal(0, 0.3, 6)), ("v", RNG.uniform(0.5, 3, 6)))]
    net.nodes.append(helper.make_node("BatchNormalization", [c] + bn, ["bn_out"], name="bn", epsilon=1e-3))
    net.op("Relu", "y_relu", ["bn_out"])
    net.nodes.append(helper.make_node("Identity", ["y_relu"], ["y"], name="out"))
    model = net.model([io("x", "N", 3, 8, 8)], [io("y", "N", 6, 8, 8)])
    folded, folds = fold_batchnorm(model)
    assert folds == [{"conv": "conv", "batchnorm": "bn", "output": "bn_out"}]
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "Identity"]
    assert folded.graph.node[0].output[0] == "bn_out"
    feeds = _images()
    assert rel_error(run(model, feeds)[0], run(folded, feeds)[0]) < 1e-5
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Relu", "Identity"]  # input untouched


def test_batchnorm_not_folded_when_the_conv_output_has_other_readers():
    net = Net(5)
    c = net.conv("conv", "x", 3, 4, gain=1.0)
    bn = [net.const(f"bn.{k}", v) for k, v in (("s", np.ones(4)), ("b", np.zeros(4)), ("m", np.zeros(4)), ("v", np.ones(4)))]
    net.nodes.append(helper.make_node("BatchNormalization", [c] + bn, ["bn_out"], name="bn"))
    net.op("Add", "sum", ["bn_out", c])
    net.nodes.append(helper.make_node("Identity", ["sum"], ["y"], name="out"))
    model = net.model([io("x", "N", 3, 8, 8)], [io("y", "N", 4, 8, 8)])
    assert fold_batchnorm(model)[1] == []


def test_region_end_is_restored_before_a_non_homogeneous_op(tmp_path):
    """Gemm -> Relu -> Gemm with outputs ~1e5 -> Softmax: the Gemms run in FP16 on scaled
    values; one Mul by 2**e restores the logits in FP32 right before the Softmax."""
    RNG = _rng()
    net = Net(6)
    h = net.op("Relu", "relu1", [net.gemm("fc1", "x", 16, 32, gain=4000.0)])
    logits = net.gemm("fc2", h, 32, 10, gain=8.0)
    net.nodes.append(helper.make_node("Softmax", [logits], ["y"], name="softmax", axis=-1))
    model = net.model([io("x", "N", 16)], [io("y", "N", 10)])
    feeds = {"x": RNG.standard_normal((16, 16)).astype(np.float32)}

    plan, folded, res = fold_check(tmp_path, model, feeds, {"x": RNG.standard_normal((16, 16)).astype(np.float32)})
    e = plan["folding"]["exponents"]["fc2"]
    assert e > 0
    assert plan["folding"]["restores"] == [{"tensor": "fc2", "exponent": e, "as": "fc2__restored", "read_by": "Softmax"}]
    restore = next(n for n in folded.graph.node if n.output[0] == "fc2__restored")
    factor = next(t for t in folded.graph.initializer if t.name == restore.input[1])
    assert float(onnx.numpy_helper.to_array(factor)) == 2.0**e
    assert _fp32_compute(plan) == [] and {"fc1", "fc2"} <= set(_fp32_compute(res["pin_plan"]))
    assert res["exact"] < 1e-6 and res["mixed"] < 5e-3


def test_graph_output_is_restored_under_its_own_name(tmp_path):
    RNG = _rng()
    net = Net(7)
    net.gemm("fc", "x", 16, 8, gain=5000.0)
    net.nodes.append(helper.make_node("Identity", ["fc"], ["y"], name="out"))
    model = net.model([io("x", "N", 16)], [io("y", "N", 8)])
    feeds = {"x": RNG.standard_normal((16, 16)).astype(np.float32)}
    plan, folded, res = fold_check(tmp_path, model, feeds, feeds)
    assert [o.name for o in folded.graph.output] == ["y"]
    assert plan["folding"]["restores"] == [{"tensor": "y", "exponent": plan["folding"]["exponents"]["y"], "as": "y", "read_by": "graph output"}]
    assert res["exact"] < 1e-6 and res["mixed"] < 5e-3


def test_underflow_guard_refuses_and_keeps_the_pinning_rule(tmp_path):
    """Concat of an overflowing Conv output and a tiny tensor: one scale for both would push the
    tiny one below FP16's normal range, so the region is refused and the range rule pins as before."""
    net = Net(8)
    big = net.conv("conv", "x", 3, 4, gain=5000.0)
    tiny = net.op("Mul", "shrink", ["x", net.const("k", 1e-4)])
    cat = net.op("Concat", "cat", [big, tiny], axis=1)
    net.conv("head", cat, 7, 2, gain=1e-2)
    net.nodes.append(helper.make_node("Identity", ["head"], ["y"], name="out"))
    model = net.model([io("x", "N", 3, 8, 8)], [io("y", "N", 2, 8, 8)])
    feeds = _images()

    plan, _, res = fold_check(tmp_path, model, feeds, _images(seed=1))
    (region,) = plan["folding"]["regions"]  # x, conv, shrink and cat share one scale through the Concat
    assert region["status"] == "refused" and "'conv'" in region["why"] and "underflow guard" in region["why"] and "'shrink'" in region["why"]
    assert "conv" not in plan["folding"]["exponents"]
    ruled = {n["name"] for n in plan["fp32_nodes"] if n["reason"] != "cost_island"}
    assert ruled == {n["name"] for n in res["pin_plan"]["fp32_nodes"] if n["reason"] != "cost_island"}
    assert res["mixed"] < 5e-3


def test_underflow_guard_uses_the_smallest_value_column(tmp_path):
    """With a smallest non-zero |x| column, the guard reads it: a tensor whose smallest values
    would leave FP16's normal range refuses its scale; the same tensor with larger ones takes it."""
    RNG = _rng()
    net = Net(9)
    net.gemm("fc", "x", 16, 8, gain=5000.0)
    net.nodes.append(helper.make_node("Relu", ["fc"], ["y"], name="relu"))
    model = net.model([io("x", "N", 16)], [io("y", "N", 8)])
    stats = measure(tmp_path, model, {"x": RNG.standard_normal((16, 16)).astype(np.float32)}, smallest=True)
    rows = stats.to_pylist()
    for smallest, folded in ((1e-4, False), (1.0, True)):
        for r in rows:
            r["min_nonzero_abs"] = smallest if r["tensor"] in ("fc", "y") else r["min_nonzero_abs"]
        table = stats.from_pylist(rows, schema=stats.schema)
        plan, _ = plan_model(model, table, PlanSettings(strategy="fold"))
        assert ("fc" in plan["folding"]["exponents"]) is folded
        assert plan["folding"]["regions"][0]["status"] == ("folded" if folded else "refused")


def test_weights_that_cannot_carry_the_factor_keep_their_scale():
    """A rescale whose rescaled weights would lose their FP16 precision is not made."""
    RNG = _rng()
    net = Net(10)
    h = net.gemm("fc1", "x", 16, 16, gain=3000.0)
    net.op("MatMul", "fc2", [h, net.const("w2", np.full((16, 4), 1e-7))])
    net.nodes.append(helper.make_node("Identity", ["fc2"], ["y"], name="out"))
    model = net.model([io("x", "N", 16)], [io("y", "N", 4)])
    ranges = {"x": TensorRange(4.0), "fc1": TensorRange(8e4), "fc2": TensorRange(1e-2), "y": TensorRange(1e-2)}
    solution = solve_scales(model, ranges, 1e4)
    # fc2's weights (1e-7, already subnormal in FP16) cannot be multiplied further down or up faithfully
    assert solution.exponents["fc1"] == 3 and solution.exponents.get("fc2", 0) in (0, 3)
    folded, _ = apply_scales(model, solution.exponents)
    feeds = {"x": RNG.standard_normal((4, 16)).astype(np.float32)}
    assert rel_error(run(model, feeds)[0], run(folded, feeds)[0]) < 1e-6


def test_apply_scales_checks_its_preconditions():
    net = Net(11)
    net.gemm("fc", "x", 4, 4, gain=1.0)
    net.nodes.append(helper.make_node("Identity", ["fc"], ["y"], name="out"))
    model = net.model([io("x", "N", 4)], [io("y", "N", 4)])
    from fp16guard.errors import ModelError

    with pytest.raises(ModelError, match="not an integer"):
        apply_scales(model, {"fc": MAX_EXPONENT + 1})
    with pytest.raises(ModelError, match="not a FLOAT activation"):
        apply_scales(model, {"fc.w": 1})


def test_plan_json_replays_to_the_same_folded_model(tmp_path):
    model = vgg19_overflow(resolution=32, width_div=16)
    stats = measure(tmp_path, model, _images(4, side=32))
    plan, folded = plan_model(model, stats, PlanSettings(strategy="fold"))
    replayed = model_for_plan(model, json.loads(json.dumps(plan)))
    assert replayed.SerializeToString() == folded.SerializeToString()
    other = vgg19_overflow(resolution=32, width_div=16)
    other.graph.node[0].output[0] = "renamed"
    other.graph.node[1].input[0] = "renamed"
    with pytest.raises(ConfigError):
        model_for_plan(other, {"folding": {"batchnorm": [], "exponents": {"conv1_1": 1}}})


def test_auto_leaves_a_model_without_overflow_unchanged(tmp_path):
    """Normalised models that never leave the range: auto pins (nothing) and keeps the model as is."""
    net = Net(12)
    c = net.conv("conv", "x", 3, 4, gain=1.0)
    bn = [net.const(f"bn.{k}", v) for k, v in (("s", np.ones(4)), ("b", np.zeros(4)), ("m", np.zeros(4)), ("v", np.ones(4)))]
    net.nodes.append(helper.make_node("BatchNormalization", [c] + bn, ["y"], name="bn"))
    model = net.model([io("x", "N", 3, 8, 8)], [io("y", "N", 4, 8, 8)])
    plan, planned = plan_model(model, measure(tmp_path, model, _images()), PlanSettings())
    assert plan["strategy"]["used"] == "pin" and "folding" not in plan and planned is model
    assert plan["strategy"]["why"] == "no tensor needed a scale"


def test_vgg19_shaped_cnn_keeps_at_most_a_tenth_of_the_pinned_compute_nodes(tmp_path):
    """The issue's acceptance check at 32x32 (channels / 8): the default strategy keeps at most
    10% of the Conv/Gemm nodes the range rule keeps FP32, and the build passes the default gate."""
    model = vgg19_overflow(resolution=32, width_div=8)
    plan, _, res = fold_check(tmp_path, model, _images(8, side=32), _images(8, side=32, seed=3), strategy="auto")
    pinned = compute_fp32(res["pin_plan"])
    assert pinned >= 5  # the model really overflows: the range rule pins a stack of layers
    assert plan["strategy"]["used"] == "fold"
    assert compute_fp32(plan) <= 0.1 * pinned
    assert res["exact"] < 1e-5
    assert res["mixed"] <= 0.02  # default VerifySettings.max_rel_error, through FP16 storage emulation
