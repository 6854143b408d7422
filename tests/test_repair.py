"""Automatic repair and per-node error attribution, on tiny models built in code (real onnxruntime)."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from fp16guard.io.shards import ShardRef
from fp16guard.plan.planner import make_plan
from fp16guard.plan.repair import REPAIR_REASON, repair_plan
from fp16guard.settings import PlanSettings, VerifySettings
from fp16guard.verify.attribute import local_errors
from fp16guard.verify.compare import verify_mixed
from tests.onnx_helpers import init, io, make_model
from tests.test_plan import measured_stats


def _cancellation_model() -> onnx.ModelProto:
    """y = tanh(((x + 1000) - 1000) @ W) + 0.1 x: in FP16, x + 1000 keeps x to +-0.25 only.

    Nothing comes near the range threshold: no range rule can see this precision loss.
    """
    w = (np.random.default_rng(7).standard_normal((16, 16)) / 4).astype(np.float32)
    return make_model(
        [
            helper.make_node("Add", ["x", "offset"], ["shifted"], name="shift"),
            helper.make_node("Sub", ["shifted", "offset"], ["back"], name="unshift"),
            helper.make_node("MatMul", ["back", "w"], ["h"], name="mm"),
            helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
            helper.make_node("Mul", ["x", "tenth"], ["skip"], name="skip"),
            helper.make_node("Add", ["t", "skip"], ["y"], name="out"),
        ],
        [io("x", "n", 16)],
        [io("y", "n", 16)],
        [init("offset", [1000.0]), numpy_helper.from_array(w, "w"), init("tenth", [0.1])],
    )


def _mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w1, w2 = [(rng.standard_normal((16, 16)) / 4).astype(np.float32) for _ in range(2)]
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        [io("x", "n", 16)],
        [io("y", "n", 16)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )


def _shards(tmp_path, count=2, n=16, seed=0, role="calib") -> list[ShardRef]:
    refs = []
    for i in range(count):
        path = tmp_path / f"{role}{i}.npz"
        np.savez(path, x=np.random.default_rng(seed + i).standard_normal((n, 16)).astype(np.float32))
        refs.append(ShardRef(path.name, str(path)))
    return refs


def _plan(model, shards):
    x = np.concatenate([np.load(r.path)["x"] for r in shards])
    return make_plan(model, measured_stats(model, {"x": x}), PlanSettings())


def test_attribution_finds_the_cancellation_and_its_cause(tmp_path):
    model = _cancellation_model()
    errors = local_errors(model, [n.name for n in model.graph.node], _shards(tmp_path), samples=16)
    assert errors[0].node == "unshift" and errors[0].rel_error > 0.02
    # Kept FP32 alone, the subtraction still reads x + 1000 from FP16 storage: the cause is upstream.
    assert errors[0].input_error > 0.5 * errors[0].rel_error
    assert {e.node: e for e in errors}["tanh"].rel_error < 2e-3


def test_repair_makes_a_precision_failure_verify_with_a_small_fp32_set(tmp_path):
    model = _cancellation_model()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    assert plan.fp32_names == set(), "the range rules must see nothing here for the test to mean anything"
    holdout = _shards(tmp_path, count=1, seed=100, role="holdout")
    _, before = verify_mixed(model, plan.fp32_names, holdout, VerifySettings())
    assert not before["passed"]

    started = time.monotonic()
    repaired = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    seconds = time.monotonic() - started
    record = repaired.repair
    assert record.outcome == "repaired", record
    assert repaired.fp32_names == {"shift", "unshift"}
    # all-FP16 fails; one growth step passes with headroom; the shrink phase finds that neither
    # node can go back alone (the pair is 1-minimal).
    assert [(s.phase, s.passed) for s in record.steps] == [("all_fp16", False), ("grow", True), ("shrink", False), ("shrink", False)]
    grown = record.steps[1]
    assert grown.accepted and grown.score * grown.inflation <= 1.0  # headroom for unseen data
    assert {tuple(s.removed) for s in record.steps[2:]} == {("shift",), ("unshift",)}
    assert record.returned == () and record.stability["method"] == "half-splits" and record.stability["slices"] >= 4
    unshift, shift = record.steps[0].added
    assert unshift["name"] == "unshift" and "appears at its output 'back'" in unshift["why"]
    assert shift["name"] == "shift" and "produces 'shifted'" in shift["why"]  # the cause: x + 1000 stored in FP16
    assert all(e.reason == REPAIR_REASON for e in repaired.fp32_nodes)
    assert repaired.counts["fp32"] == 2 and repaired.counts["fp16"] == plan.counts["fp16"] - 2
    _, after = verify_mixed(model, repaired.fp32_names, holdout, VerifySettings())
    assert after["passed"], after["reason"]  # the independent holdout agrees
    assert seconds < 30
    data = repaired.to_dict()
    assert data["repair"]["steps"][1]["fp32_nodes"] == 2 and data["repair"]["outcome"] == "repaired"


def test_a_plan_that_passes_is_unchanged(tmp_path):
    model = _mlp()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    repaired = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    assert repaired.repair.outcome == "unchanged" and len(repaired.repair.steps) == 1
    assert repaired.fp32_names == plan.fp32_names and repaired.to_dict()["fp32_nodes"] == plan.to_dict()["fp32_nodes"]


@pytest.mark.parametrize("budget", [{"repair_max_iterations": 0}, {"repair_max_seconds": 1e-6}])
def test_budget_is_respected(tmp_path, budget):
    model = _cancellation_model()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    repaired = repair_plan(model, plan, calib, PlanSettings(**budget), VerifySettings())
    assert repaired.repair.outcome == "budget_spent" and "budget" in repaired.repair.message
    assert len(repaired.repair.steps) == 1 and repaired.fp32_names == plan.fp32_names


def test_repair_off_is_recorded(tmp_path):
    model = _mlp()
    plan = _plan(model, _shards(tmp_path))
    repaired = repair_plan(model, plan, _shards(tmp_path), PlanSettings(repair=False), VerifySettings())
    assert repaired.repair.outcome == "skipped" and repaired.fp32_names == plan.fp32_names



def test_plan_task_repairs_with_the_runs_gate_and_writes_the_record(tmp_path):
    # The task body (no Prefect server): rules, then repair on the calibration shards.
    import json

    import onnx as _onnx

    from fp16guard.stats.collect import shard_stats, write_stats_files
    from tasks.plan import plan_task

    model_path = tmp_path / "m.onnx"
    _onnx.save(_cancellation_model(), str(model_path))
    calib = _shards(tmp_path)
    write_stats_files([shard_stats(model_path, r) for r in calib], tmp_path / "stats.parquet")
    pin = PlanSettings(strategy="pin")  # the rules alone: what this test is about
    plan = plan_task.fn(str(model_path), str(tmp_path / "stats.parquet"), pin, str(tmp_path), calib, VerifySettings(), None)
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written == plan and plan["repair"]["outcome"] == "repaired"
    assert {e["name"] for e in plan["fp32_nodes"]} == {"shift", "unshift"}
    loose = plan_task.fn(str(model_path), str(tmp_path / "stats.parquet"), pin, str(tmp_path), calib, VerifySettings(max_rel_error=1.0, min_cosine=0.0), None)
    assert loose["repair"]["outcome"] == "unchanged" and loose["fp32_nodes"] == []  # the user's gate decides


def test_repair_never_pins_a_node_forced_to_fp16(tmp_path):
    model = _cancellation_model()
    calib = _shards(tmp_path)
    settings = PlanSettings(force_fp16_nodes="^unshift$", repair_max_iterations=3)
    x = np.concatenate([np.load(r.path)["x"] for r in calib])
    plan = make_plan(model, measured_stats(model, {"x": x}), settings)
    repaired = repair_plan(model, plan, calib, settings, VerifySettings())
    assert "unshift" not in repaired.fp32_names
    assert not repaired.repair.steps[0].passed and repaired.repair.steps[0].added, "repair must have tried"
    assert repaired.repair.outcome in ("repaired", "stuck", "budget_spent")
