"""The search for the smallest FP32 set by cost: gates as objects, all-FP16 first, the shrink
policy, the statistical margin, gate suggestions (tiny models built in code, real onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fp16guard.io.shards import ShardRef
from fp16guard.plan.planner import make_plan
from fp16guard.plan.records import Plan
from fp16guard.plan.repair import repair_plan, tightened
from fp16guard.plan.search.margin import FALLBACK, MAX_INFLATION, inflation
from fp16guard.plan.search.shrink import CostDdmin
from fp16guard.report.plan_summary import step_line
from fp16guard.settings import PlanSettings, VerifySettings
from fp16guard.verify.compare import verify
from fp16guard.verify.metrics import AgreementMetric, Gate, NumericMetric
from tests.onnx_helpers import init, io, make_model
from tests.test_plan import measured_stats


def _shards(tmp_path, count=2, n=16, width=16, seed=0, role="calib", scale=1.0) -> list[ShardRef]:
    refs = []
    for i in range(count):
        path = tmp_path / f"{role}{i}.npz"
        np.savez(path, x=(scale * np.random.default_rng(seed + i).standard_normal((n, width))).astype(np.float32))
        refs.append(ShardRef(path.name, str(path)))
    return refs


def _plan(model, shards, settings=None):
    x = np.concatenate([np.load(r.path)["x"] for r in shards])
    return make_plan(model, measured_stats(model, {"x": x}), settings or PlanSettings())


# ------------------------------------------------------------------------------------------
# gates are objects


def test_tightened_keeps_every_output_gate():
    settings = VerifySettings(output_gates={"probs": {"gate": "top1", "min_agreement": 0.9}, "mask": {"gate": "iou", "threshold": 0.3, "min_agreement": 0.8}})
    gate = tightened(settings, 0.5)
    assert gate.metric("probs") == AgreementMetric("top1", min_agreement=0.95, k=5, threshold=0.5)
    assert gate.metric("mask") == AgreementMetric("iou", min_agreement=0.9, k=5, threshold=0.3)
    assert gate.metric("other") == NumericMetric(max_rel_error=0.01, min_cosine=1 - 0.001 * 0.5, max_mismatch_fraction=0.0)
    assert gate.tolerances()["factor"] == 0.5 and gate.tolerances()["output_gates"]["probs"]["gate"] == "top1"
    with pytest.raises(ValueError):
        gate.tightened(0)


def _two_heads() -> onnx.ModelProto:
    """y: a cancellation ((x + 1000) - 1000) that FP16 ruins; probs: a softmax over logits near
    300 (FP16 spacing 0.25) whose rounding moves the probabilities by a few % but, their spread
    being wide, keeps every arg-max."""
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((16, 16)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((16, 4)) * 1.5).astype(np.float32)
    return make_model(
        [
            helper.make_node("Add", ["x", "offset"], ["shifted"], name="shift"),
            helper.make_node("Sub", ["shifted", "offset"], ["back"], name="unshift"),
            helper.make_node("MatMul", ["back", "w"], ["h"], name="mm"),
            helper.make_node("Tanh", ["h"], ["y"], name="tanh"),
            helper.make_node("MatMul", ["x", "w2"], ["raw"], name="head"),
            helper.make_node("Add", ["raw", "bias"], ["logits"], name="bias_add"),
            helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
        ],
        [io("x", "n", 16)],
        [io("y", "n", 16), io("probs", "n", 4)],
        [init("offset", [1000.0]), numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2"), init("bias", [300.0])],
    )


def test_a_top1_gate_survives_repair(tmp_path):
    model = _two_heads()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    assert plan.fp32_names == set()
    from fp16guard.graph.convert import to_mixed_precision

    strict = verify(model, to_mixed_precision(model, {"shift", "unshift"}), calib, VerifySettings(), emulate=True)
    assert not strict["outputs"]["probs"]["passed"] and strict["outputs"]["probs"]["checks"]["top1_agreement"] == 1.0, "probs must fail numeric and keep top-1"

    settings = VerifySettings(output_gates={"probs": "top1"})
    lines: list[str] = []
    repaired = repair_plan(model, plan, calib, PlanSettings(), settings, on_step=lambda step: lines.append(step_line(step)))
    record = repaired.repair
    # Repair fixes y; probs stays judged by top-1 in every check (before, the tightened gate of
    # the second check on dropped output_gates and pinned the softmax head for the numeric gate).
    assert record.outcome == "repaired", record.message
    assert repaired.fp32_names == {"shift", "unshift"}
    assert all(s.accepted or not s.passed or s.phase == "all_fp16" for s in record.steps)
    assert Plan.from_dict(repaired.to_dict()).repair.steps[1].phase == "grow"
    # Progress while it runs: one line per check, as the flow's log shows them.
    assert len(lines) == len(record.steps) and lines[0].startswith("search check 0 (all_fp16): 0 FP32 nodes")
    assert lines[1].startswith("search check 1 (grow): 2 FP32 nodes") and lines[1].endswith(("accepted, " + lines[1].rsplit(", ", 1)[-1]))

    numeric = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    assert numeric.fp32_names - {"shift", "unshift"}, "under the numeric gate the head must need FP32, or this test shows nothing"


def _rms_eps() -> onnx.ModelProto:
    """y = x / sqrt(mean(x^2) + 1e-12): the epsilon is 0 in FP16 and changes nothing here."""
    return make_model(
        [
            helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
            helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean", axes=[-1], keepdims=1),
            helper.make_node("Add", ["ms", "eps"], ["mse"], name="add_eps"),
            helper.make_node("Sqrt", ["mse"], ["rms"], name="sqrt"),
            helper.make_node("Div", ["x", "rms"], ["y"], name="norm"),
        ],
        [io("x", "n", 16)],
        [io("y", "n", 16)],
        [init("eps", [1e-12])],
    )


def test_an_all_fp16_build_that_passes_is_the_plan(tmp_path):
    model = _rms_eps()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    assert "add_eps" in plan.fp32_names, "the underflow rule must pin the epsilon's reader for this test to mean anything"
    repaired = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    assert repaired.repair.outcome == "all_fp16" and repaired.fp32_names == set()
    assert [s.phase for s in repaired.repair.steps] == ["all_fp16"] and repaired.repair.fp32_flops_share == 0.0
    assert repaired.counts["fp32"] == 0


def test_range_guards_go_when_the_all_fp16_build_passes(tmp_path):
    # |x| ~ 3e4: above the range threshold (1e4) but held by FP16 (spacing 16: error ~5e-4).
    model = make_model(
        [helper.make_node("Mul", ["x", "half"], ["h"], name="scale"), helper.make_node("Add", ["h", "one"], ["y"], name="shift")],
        [io("x", "n", 16)], [io("y", "n", 16)], [init("half", [0.5]), init("one", [1.0])],
    )
    calib = _shards(tmp_path, scale=1e4)
    plan = _plan(model, calib)
    assert plan.fp32_names == {"scale", "shift"} and {e.reason for e in plan.fp32_nodes} <= {"input_above_threshold", "output_above_threshold"}
    repaired = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    assert repaired.repair.outcome == "all_fp16" and repaired.fp32_names == set()
    forced = _plan(model, calib, PlanSettings(force_fp32_ops=["Mul"]))
    kept = repair_plan(model, forced, calib, PlanSettings(force_fp32_ops=["Mul"]), VerifySettings())
    assert kept.fp32_names == {"scale"}  # what the user forced is never overruled


# ------------------------------------------------------------------------------------------
# the shrink policy


def test_cost_ddmin_returns_all_but_the_needed_nodes_costliest_first():
    costs = {"conv1": 1000.0, "conv2": 800.0, "gemm": 500.0, "add": 1.0, "relu": 1.0, "mul": 1.0, "sub": 1.0, "div": 1.0}
    needed = {"gemm", "sub"}
    policy = CostDdmin(list(costs), costs)
    kept = set(costs)
    trials = []
    while (chunk := policy.next_chunk()) is not None:
        trials.append(chunk)
        accepted = not (set(chunk) & needed)
        policy.feedback(accepted)
        if accepted:
            kept -= set(chunk)
    assert kept == needed  # 1-minimal: no single node can go back
    assert trials[0][0] == "conv1"  # the costliest node leads
    assert len(trials) <= 2 * len(costs)


# ------------------------------------------------------------------------------------------
# the statistical margin


def test_inflation_follows_how_the_error_varies():
    assert inflation([0.5] * 16).inflation == 1.0  # even errors: aim at the gate itself
    one_sample = inflation([0.01] * 15 + [0.9])
    assert one_sample.inflation == MAX_INFLATION and one_sample.method == "half-splits"
    spread = inflation(list(np.random.default_rng(0).uniform(0.5, 1.0, 32)))
    assert 1.0 < spread.inflation < 1.5
    assert inflation([0.3, 0.4]).inflation == FALLBACK and inflation([0.3, 0.4]).method == "fallback"
    assert inflation([0.3] * 8, fixed_margin=0.5).inflation == 2.0
    assert inflation([float("inf")] * 8).method == "exact"


# ------------------------------------------------------------------------------------------
# gate suggestions


def test_a_failing_numeric_gate_says_which_task_gate_would_pass(tmp_path):
    from fp16guard.graph.convert import to_mixed_precision

    model = _two_heads()
    holdout = _shards(tmp_path, role="holdout", seed=50)
    report = verify(model, to_mixed_precision(model, {"shift", "unshift"}), holdout, VerifySettings(), emulate=True)
    assert not report["passed"]
    (suggestion,) = report["suggested_gates"]
    assert suggestion["output"] == "probs" and suggestion["flag"] == "probs=top1"
    assert "top-1 agrees at 32 of 32 positions: `--gate probs=top1` would pass" in report["reason"]
    again = verify(model, to_mixed_precision(model, {"shift", "unshift"}), holdout, VerifySettings(output_gates={"probs": "top1"}), emulate=True)
    assert again["passed"] and "suggested_gates" not in again


def test_a_gate_scores_nan_as_infinite():
    gate = Gate.from_settings(VerifySettings())
    assert gate.score({"y": {"kind": "float", "nonfinite": 3, "max_rel_error": None}}) == float("inf")
    assert gate.score({"y": {"kind": "float", "nonfinite": 0, "max_rel_error": 0.01, "cosine": 1.0}}) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------
# a user-supplied gate


class _MeanAbs:
    """Mean |cand - fp32| <= tol: a metric with its own accumulator (what a user may write)."""

    name = "custom"

    def __init__(self, tol: float) -> None:
        self.tol = tol

    def accumulator(self):
        class Acc:
            total = 0.0
            count = 0

            def update(self, ref, cand):
                self.total += float(np.abs(np.asarray(cand, np.float64) - ref).sum())
                self.count += ref.size

            def figures(self):
                return {"mean_abs_error": self.total / max(1, self.count)}

        return Acc()

    def judge(self, output, fig):
        from fp16guard.verify.metrics import Failure

        value = fig["checks"]["mean_abs_error"]
        return [] if value <= self.tol else [Failure(1e9 + value / self.tol, f"output '{output}': mean abs error {value:.3g} > {self.tol:g}")]

    def score(self, fig):
        return fig["checks"]["mean_abs_error"] / self.tol

    def tightened(self, factor):
        return _MeanAbs(self.tol * factor)


def mean_abs_gate(gate):
    return _MeanAbs(1e-3 if gate.min_agreement == 1.0 else 1.0)


def test_a_custom_gate_from_the_cli_judges_with_its_own_accumulator(tmp_path):
    from fp16guard.cli.commands.run import parse_gates
    from fp16guard.errors import ConfigError
    from fp16guard.graph.convert import to_mixed_precision

    gates = parse_gates(["y=custom:tests.test_search:mean_abs_gate", "probs=iou:0.3@0.9"])
    assert gates == {"y": {"gate": "custom", "metric": "tests.test_search:mean_abs_gate"}, "probs": {"gate": "iou", "threshold": 0.3, "min_agreement": 0.9}}
    with pytest.raises(ConfigError):
        parse_gates(["y=custom"])
    model = _two_heads()
    holdout = _shards(tmp_path, role="holdout", seed=50)
    cand = to_mixed_precision(model, set())  # the cancellation ruins y: mean abs error ~0.1
    strict = verify(model, cand, holdout, VerifySettings(output_gates={"y": gates["y"], "probs": "top1"}), emulate=True)
    assert not strict["outputs"]["y"]["passed"] and strict["outputs"]["y"]["checks"]["mean_abs_error"] > 1e-3
    assert "mean abs error" in strict["reason"]
    loose = verify(model, cand, holdout, VerifySettings(output_gates={"y": {**gates["y"], "min_agreement": 0.5}, "probs": "top1"}), emulate=True)
    assert loose["passed"] and loose["outputs"]["y"]["gate"] == "custom"
    with pytest.raises(ConfigError, match="cannot be imported"):
        verify(model, cand, holdout, VerifySettings(output_gates={"y": {"gate": "custom", "metric": "no_such_module:f"}}), emulate=True)


def test_a_state_batched_on_an_undeclared_axis_is_not_sliced(tmp_path):
    # x [N, 16] and state [2, N, 16], no named dimensions: nothing declares that state's batch
    # is axis 1, so the checker must not cut the shard into slices (it crashed on silero VAD).
    from onnx import TensorProto

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])
    nodes = [
        helper.make_node("ReduceSum", ["state", "axes"], ["summed"], name="sum", keepdims=0),
        helper.make_node("Add", ["x", "summed"], ["y"], name="add"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, state], [y], [numpy_helper.from_array(np.array([0], np.int64), "axes")]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    refs = []
    rng = np.random.default_rng(0)
    for i in range(2):
        path = tmp_path / f"s{i}.npz"
        np.savez(path, x=rng.standard_normal((8, 16)).astype(np.float32), state=rng.standard_normal((2, 8, 16)).astype(np.float32))
        refs.append(ShardRef(path.name, str(path)))
    plan = make_plan(model, measured_stats(model, {"x": np.load(refs[0].path)["x"], "state": np.load(refs[0].path)["state"]}), PlanSettings())
    repaired = repair_plan(model, plan, refs, PlanSettings(), VerifySettings())
    assert repaired.repair.outcome in ("unchanged", "all_fp16") and repaired.repair.stability["slices"] == 2
    assert "the statistical margin rests on 2 calibration slice(s)" in repaired.repair.message
