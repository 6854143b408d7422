"""The rule seam of the planner and the stored-value underflow rule, on tiny models built in code."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pyarrow as pa
from onnx import helper, numpy_helper

from fp16guard.io.shards import ShardRef
from fp16guard.plan.planner import REASONS, make_plan
from fp16guard.plan.records import Plan
from fp16guard.plan.rule import Finding
from fp16guard.plan.rules import DEFAULT_RULES
from fp16guard.plan.rules.initializer_underflow import InitializerUnderflowRule
from fp16guard.settings import PlanSettings, VerifySettings
from fp16guard.verify.compare import verify_mixed
from tests.onnx_helpers import init, io, make_model
from tests.test_plan import measured_stats

WITHOUT_UNDERFLOW = tuple(r for r in DEFAULT_RULES if not isinstance(r, InitializerUnderflowRule))


class _ExpRule:
    """A rule written against the seam only: keep every Exp FP32."""

    codes = ("exp_is_scary",)
    structural = False

    def findings(self, node, ctx):
        if node.op_type != "Exp":
            return []
        (name,) = node.input
        stats = ctx.stats(name)
        return [Finding("exp_is_scary", f"input {name!r} has max |x| = {stats.max_abs:g} and extra={stats.get('extra')}", (name,))]


def test_a_new_rule_is_one_class_and_one_registration():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"], name="relu"), helper.make_node("Exp", ["a"], ["y"], name="exp")],
        [io("x", 2, 3)],
        [io("y", 2, 3)],
    )
    stats = pa.table({"tensor": ["x", "a", "y"], "max_abs": [1.0, 1.0, 2.7], "nonfinite": [0, 0, 0], "extra": [0.0, 7.0, 0.0]})
    assert make_plan(model, stats, PlanSettings()).fp32_names == set()
    plan = make_plan(model, stats, PlanSettings(), rules=DEFAULT_RULES + (_ExpRule(),))
    (entry,) = plan.fp32_nodes
    assert entry.name == "exp" and entry.reason == "exp_is_scary" and entry.triggers == ("a",)
    assert "extra=7.0" in entry.details[0]  # columns beyond max_abs/nonfinite reach the rule
    assert entry.inputs == ("a",) and entry.outputs == ("y",)


def test_plan_entries_are_typed_and_round_trip():
    model = make_model(
        [helper.make_node("Mul", ["x", "k"], ["l"], name="scale"), helper.make_node("Softmax", ["l"], ["y"], name="softmax")],
        [io("x", 4, 8)],
        [io("y", 4, 8)],
        [init("k", [3.0e4])],
    )
    x = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    plan = make_plan(model, measured_stats(model, x), PlanSettings())
    soft = next(e for e in plan.fp32_nodes if e.name == "softmax")
    assert soft.triggers == ("l",) and soft["reason"] == "input_above_threshold"
    data = json.loads(json.dumps(plan.to_dict()))
    assert Plan.from_dict(data).to_dict() == data
    # plan.json written before inputs/reasons/triggers existed still loads.
    old = Plan.from_dict({"threshold": 1.0, "fp32_nodes": [{"name": "n", "op_type": "Add", "outputs": ["c"], "reason": "forced_name", "details": ["d"]}]})
    assert old.fp32_nodes[0].reasons == ("forced_name",) and old.fp32_nodes[0].triggers == ()
    assert REASONS.index("no_statistics") < REASONS.index("initializer_underflow")


def _log_power_model(eps: float = 1e-10) -> onnx.ModelProto:
    # Log-power features with mean normalisation per row: log(x*x + eps) - mean(log(x*x + eps)).
    eps_const = numpy_helper.from_array(np.array(eps, np.float32), "eps")
    return make_model(
        [
            helper.make_node("Mul", ["x", "x"], ["power"], name="square"),
            helper.make_node("Constant", [], ["eps"], name="eps", value=eps_const),
            helper.make_node("Add", ["power", "eps"], ["guarded"], name="add_eps"),
            helper.make_node("Log", ["guarded"], ["logp"], name="log"),
            helper.make_node("ReduceMean", ["logp"], ["mean"], name="mean", axes=[-1], keepdims=1),
            helper.make_node("Sub", ["logp", "mean"], ["y"], name="normalise"),
        ],
        [io("x", "n", 16)],
        [io("y", "n", 16)],
    )


def _padded_audio(n: int, seed: int) -> np.ndarray:
    # Frames of signal (|x| >= 0.05) with exact-zero padding at the end of each row.
    rng = np.random.default_rng(seed)
    x = (np.sign(rng.standard_normal((n, 16))) * rng.uniform(0.05, 1.0, (n, 16))).astype(np.float32)
    x[:, 12:] = 0.0
    return x


def test_epsilon_below_fp16_range_keeps_its_readers_fp32(tmp_path):
    model = _log_power_model()
    calib = {"x": _padded_audio(8, 0)}
    stats = measured_stats(model, calib)
    np.savez(tmp_path / "holdout.npz", x=_padded_audio(8, 1))
    holdout = [ShardRef("holdout.npz", str(tmp_path / "holdout.npz"))]

    before = make_plan(model, stats, PlanSettings(), rules=WITHOUT_UNDERFLOW)
    assert before.fp32_names == set()
    _, report = verify_mixed(model, before.fp32_names, holdout, VerifySettings())
    assert not report["passed"] and report["outputs"]["y"]["nonfinite"] == 8 * 16  # every output NaN

    plan = make_plan(model, stats, PlanSettings())
    assert plan.fp32_names == {"eps", "add_eps", "log"}
    by_name = {e.name: e for e in plan.fp32_nodes}
    assert by_name["add_eps"].reasons == ("initializer_underflow",) and by_name["add_eps"].triggers == ("eps",)
    assert "become 0 in FP16" in by_name["add_eps"].details[0]
    assert by_name["log"].triggers == ("guarded",)
    _, report = verify_mixed(model, plan.fp32_names, holdout, VerifySettings())
    assert report["passed"], report["reason"]


def _matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [io("x", 2, 8)], [io("y", 2, 8)], [numpy_helper.from_array(weight, "w")])


def test_a_few_tiny_weights_among_normal_ones_are_not_underflow():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 8)).astype(np.float32)
    weight[0, :3] = [1e-9, -3e-7, 2e-6]  # tiny, but a sliver of the tensor's magnitude
    stats = pa.table({"tensor": ["x", "y"], "max_abs": [1.0, 5.0], "nonfinite": [0, 0]})
    assert make_plan(_matmul_model(weight), stats, PlanSettings()).fp32_names == set()


def test_weights_mostly_below_fp16_normal_range_are_underflow():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((8, 8)) * 1e-7).astype(np.float32)  # |w| < 4e-7: 0-3 bits left in FP16
    weight[0, 0] = 3e-6  # one value that keeps its bits does not carry most of the magnitude
    stats = pa.table({"tensor": ["x", "y"], "max_abs": [1.0, 5.0], "nonfinite": [0, 0]})
    (entry,) = make_plan(_matmul_model(weight), stats, PlanSettings()).fp32_nodes
    assert entry.reason == "initializer_underflow" and "non-zero magnitude below" in entry.details[0]
    zeros = np.zeros((8, 8), np.float32)  # zeros are exact in FP16
    assert make_plan(_matmul_model(zeros), stats, PlanSettings()).fp32_names == set()
    subnormal = np.full((8, 8), 1e-5, np.float32)  # subnormal in FP16 but stored within 0.3%
    assert make_plan(_matmul_model(subnormal), stats, PlanSettings()).fp32_names == set()


def _floor_to_int_model() -> onnx.ModelProto:
    """``Cast(Floor(x), INT32)``: float arithmetic turned into integers (quantisation, indices)."""
    nodes = [
        helper.make_node("Floor", ["x"], ["f"], name="floor"),
        helper.make_node("Cast", ["f"], ["q"], name="to_int", to=onnx.TensorProto.INT32),
    ]
    return make_model(nodes, [io("x", "N", 16)], [io("q", "N", 16, dtype=onnx.TensorProto.INT32)])


def test_integers_above_2048_are_cast_from_fp32():
    model = _floor_to_int_model()
    rng = np.random.default_rng(0)
    calib = {"x": rng.uniform(-5000, 5000, (4, 16)).astype(np.float32)}
    stats = measured_stats(model, calib)
    without = tuple(r for r in DEFAULT_RULES if "integer_conversion" not in r.codes)
    before = make_plan(model, stats, PlanSettings(), rules=without)
    assert before.fp32_names == set()
    plan = make_plan(model, stats, PlanSettings())
    assert plan.fp32_names == {"floor", "to_int"}
    assert {e.reason for e in plan.fp32_nodes} == {"integer_conversion"}


def test_integer_conversion_rule_changes_the_verdict(tmp_path):
    model = _floor_to_int_model()
    rng = np.random.default_rng(1)
    calib = {"x": rng.uniform(-5000, 5000, (4, 16)).astype(np.float32)}
    np.savez(tmp_path / "holdout.npz", x=rng.uniform(-5000, 5000, (4, 16)).astype(np.float32))
    holdout = [ShardRef("holdout.npz", str(tmp_path / "holdout.npz"))]
    _, report = verify_mixed(model, set(), holdout, VerifySettings())
    assert not report["passed"]  # FP16 storage rounds integers above 2048 to even ones
    plan = make_plan(model, measured_stats(model, calib), PlanSettings())
    _, report = verify_mixed(model, plan.fp32_names, holdout, VerifySettings())
    assert report["passed"], report["reason"]


def test_small_integers_stay_fp16():
    model = _floor_to_int_model()
    calib = {"x": np.random.default_rng(2).uniform(-2000, 2000, (4, 16)).astype(np.float32)}
    assert make_plan(model, measured_stats(model, calib), PlanSettings()).fp32_names == set()
