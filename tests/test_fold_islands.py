"""Cost-aware islands: FP16 runs too short to pay for their Casts move to FP32."""

from __future__ import annotations

import numpy as np
from onnx import helper

from fold_models import Net, io, run
from fp16guard.graph.convert import to_mixed_precision
from fp16guard.plan.strategies.islands import merge_islands


def _plan(model, names):
    nodes = {n.name: n for n in model.graph.node}
    return {"threshold": 1e4, "fp32_nodes": [{"name": n, "op_type": nodes[n].op_type, "outputs": list(nodes[n].output)} for n in names], "counts": {"nodes": len(nodes), "fp32": len(names), "fp16": len(nodes) - len(names), "neutral": 0}}


def _sandwich(middle: list[str]):
    """fc1 -> <middle element-wise ops> -> fc2 -> y."""
    net = Net(0)
    h = net.gemm("fc1", "x", 8, 8, gain=1.0)
    for i, op in enumerate(middle):
        h = net.op(op, f"mid{i}", [h] if op != "Add" else [h, net.const(f"c{i}", np.ones(8))])
    net.gemm("fc2", h, 8, 4, gain=1.0)
    net.nodes.append(helper.make_node("Identity", ["fc2"], ["y"], name="out"))
    return net.model([io("x", "N", 8)], [io("y", "N", 4)])


def _casts(model, fp32):
    return sum(n.op_type == "Cast" for n in to_mixed_precision(model, fp32).graph.node)


def test_single_relu_between_fp32_layers_moves_to_fp32():
    model = _sandwich(["Relu"])
    plan = merge_islands(model, _plan(model, ["fc1", "fc2"]))
    # the Identity between fc2 and the graph output is such a run too (a Cast in, a Cast out)
    assert plan["islands"] == [{"nodes": ["mid0"], "border_tensors": 2, "cast_bytes": 12, "fp16_saving_bytes": 4}, {"nodes": ["out"], "border_tensors": 2, "cast_bytes": 12, "fp16_saving_bytes": 4}]
    entry = next(e for e in plan["fp32_nodes"] if e["name"] == "mid0")
    assert entry["reason"] == "cost_island" and [e["name"] for e in plan["fp32_nodes"]] == ["fc1", "mid0", "fc2", "out"]
    assert plan["counts"]["fp32"] == 4 and plan["counts"]["fp16"] == 0
    fp32 = {e["name"] for e in plan["fp32_nodes"]}
    assert _casts(model, fp32) < _casts(model, {"fc1", "fc2"})  # the two Casts around the Relu are gone
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(to_mixed_precision(model, fp32), feeds)[0], run(model, feeds)[0], rtol=1e-2, atol=1e-2)


def test_long_elementwise_run_stays_fp16():
    model = _sandwich(["Relu", "Add", "Relu", "Add", "Relu"])
    plan = merge_islands(model, _plan(model, ["fc1", "fc2"]))
    assert [i["nodes"] for i in plan["islands"]] == [["out"]]
    assert {e["name"] for e in plan["fp32_nodes"]} == {"fc1", "fc2", "out"}


def test_runs_with_compute_ops_and_all_fp16_models_are_left_alone():
    model = _sandwich(["Relu"])
    assert merge_islands(model, _plan(model, ["fc1"]))["islands"] == []  # Relu, fc2 (a Gemm) and the Identity form one run
    assert merge_islands(model, _plan(model, []))["islands"] == []
