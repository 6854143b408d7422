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
    assert plan["islands"] == [
        {"nodes": ["mid0"], "border_tensors": 2, "float_slots": 2, "cast_cost": 2.0, "fp16_saving": 0.24},
        {"nodes": ["out"], "border_tensors": 2, "float_slots": 2, "cast_cost": 2.0, "fp16_saving": 0.24},
    ]
    entry = next(e for e in plan["fp32_nodes"] if e["name"] == "mid0")
    assert entry["reason"] == "cost_island" and [e["name"] for e in plan["fp32_nodes"]] == ["fc1", "mid0", "fc2", "out"]
    assert plan["counts"]["fp32"] == 4 and plan["counts"]["fp16"] == 0
    fp32 = {e["name"] for e in plan["fp32_nodes"]}
    assert _casts(model, fp32) < _casts(model, {"fc1", "fc2"})  # the two Casts around the Relu are gone
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(to_mixed_precision(model, fp32), feeds)[0], run(model, feeds)[0], rtol=1e-2, atol=1e-2)


def test_runs_move_up_to_the_measured_break_even_and_longer_ones_stay_fp16():
    """Break-even is about 8.3 float slots per border (CAST_COST / FP16_SAVING, fitted on the
    H200): a chain of 8 single-input ops between two FP32 layers (16 slots, 2 borders) moves to
    FP32, a chain of 9 (18 slots) stays FP16."""
    ops = ["Relu", "Add", "Sigmoid", "Add", "Relu", "Add", "Sigmoid", "Add", "Relu"]
    eight = _sandwich(ops[:8])
    assert sorted(i["nodes"] for i in merge_islands(eight, _plan(eight, ["fc1", "fc2"]))["islands"]) == [[f"mid{i}" for i in range(8)], ["out"]]
    nine = _sandwich(ops)
    plan = merge_islands(nine, _plan(nine, ["fc1", "fc2"]))
    assert [i["nodes"] for i in plan["islands"]] == [["out"]]
    assert {e["name"] for e in plan["fp32_nodes"]} == {"fc1", "fc2", "out"}


def test_an_isolated_fp32_node_keeps_its_fp16_neighbours():
    """The other side of the trade: a cheap node pinned FP32 between FP16 compute layers gets its
    input and output cast; the layers around it stay FP16 (never pulled into FP32 for it)."""
    model = _sandwich(["Sigmoid"])
    plan = merge_islands(model, _plan(model, ["mid0"]))
    assert plan["islands"] == [] and {e["name"] for e in plan["fp32_nodes"]} == {"mid0"}
    mixed = to_mixed_precision(model, {"mid0"})
    casts = [n for n in mixed.graph.node if n.op_type == "Cast"]
    sigmoid = next(n for n in mixed.graph.node if n.name == "mid0")
    producers = {o: n for n in mixed.graph.node for o in n.output}
    assert producers[sigmoid.input[0]].op_type == "Cast"  # its input is cast up from fc1's FP16 output
    assert any(sigmoid.output[0] in n.input for n in casts)  # and its output cast down for fc2


def test_runs_with_compute_ops_and_all_fp16_models_are_left_alone():
    model = _sandwich(["Relu"])
    assert merge_islands(model, _plan(model, ["fc1"]))["islands"] == []  # Relu, fc2 (a Gemm) and the Identity form one run
    assert merge_islands(model, _plan(model, []))["islands"] == []
