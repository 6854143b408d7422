"""FP16 inside subgraphs: If/Loop/Scan nodes run in FP16 with their bodies, judged by the checks.

Tiny models built in code; every converted model is checked (full ONNX checker, strict shape
inference) and run on onnxruntime; the plan side goes through the rules and repair.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fp16guard.graph.convert import to_mixed_precision
from fp16guard.graph.emulate import emulate_fp16_storage
from fp16guard.graph.info import fp16_slots, opset_map, subgraphs, tensor_types
from fp16guard.plan.repair import repair_plan
from fp16guard.settings import PlanSettings, VerifySettings
from fp16guard.verify.compare import verify_mixed
from tests.onnx_helpers import init, io, make_model, run_ort
from tests.test_repair import _plan, _shards

F, H, B, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BOOL, TensorProto.INT64
RNG = np.random.default_rng(11)
W = (RNG.standard_normal((16, 16)) / 4).astype(np.float32)


def _x(seed=0, n=8):
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def _cond_nodes():
    """cond = sum(x) > 0, computed in the main graph."""
    return [
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond"),
    ]


def _benign_if() -> onnx.ModelProto:
    """Branches read the outer weight ``w`` and the outer activation ``h``; a body initializer."""
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w"], ["tm"], name="then_mm"), helper.make_node("Tanh", ["tm"], ["t_out"], name="then_tanh")],
        "then", [], [io("t_out", "n", 16)],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w"], ["em"], name="else_mm"), helper.make_node("Mul", ["em", "half"], ["e_out"], name="else_mul")],
        "else", [], [io("e_out", "n", 16)], [init("half", [0.5])],
    )
    return make_model(
        _cond_nodes() + [
            helper.make_node("Relu", ["x"], ["h"], name="relu"),
            helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g),
            helper.make_node("Add", ["branch", "h"], ["y"], name="add"),
        ],
        [io("x", "n", 16)], [io("y", "n", 16)], [init("w", W), init("zero", 0.0)],
    )


def _overflowing_if() -> onnx.ModelProto:
    """Both branches compute sqrt(h * h) with |h| up to ~1e3: h * h overflows FP16 inside the body only."""
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["h", "h"], ["sq"], name="then_sq"), helper.make_node("Sqrt", ["sq"], ["t_out"], name="then_sqrt")],
        "then", [], [io("t_out", "n", 16)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Mul", ["h", "h"], ["sq2"], name="else_sq"), helper.make_node("Sqrt", ["sq2"], ["r2"], name="else_sqrt"),
         helper.make_node("Neg", ["r2"], ["e_out"], name="else_neg")],
        "else", [], [io("e_out", "n", 16)],
    )
    return make_model(
        _cond_nodes() + [
            helper.make_node("Mul", ["x", "k"], ["h"], name="scale"),
            helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g),
            helper.make_node("Mul", ["branch", "milli"], ["y"], name="out"),
        ],
        [io("x", "n", 16)], [io("y", "n", 16)], [init("k", [300.0]), init("milli", [1e-3]), init("zero", 0.0)],
    )


def _loop() -> onnx.ModelProto:
    """A Loop with a carried float state, a scan output, an outer weight, an op with no FP16
    kernel in the body (Range) reading an outer scalar, and an If nested in the body."""
    inner_then = helper.make_graph([helper.make_node("Mul", ["s", "half"], ["it"], name="inner_mul")], "ithen", [], [io("it", "n", 16)])
    inner_else = helper.make_graph([helper.make_node("Neg", ["s"], ["ie"], name="inner_neg")], "ielse", [], [io("ie", "n", 16)])
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["acc_in", "w"], ["mm"], name="body_mm"),
            helper.make_node("Range", ["start", "limit", "delta"], ["ramp"], name="body_range"),
            helper.make_node("Mul", ["ramp", "tiny"], ["ramp_s"], name="body_ramp_scale"),
            helper.make_node("Add", ["mm", "ramp_s"], ["s"], name="body_add"),
            helper.make_node("ReduceSum", ["s"], ["tot"], name="body_total", keepdims=0),
            helper.make_node("Greater", ["tot", "zero"], ["c"], name="body_cond"),
            helper.make_node("If", ["c"], ["br"], name="body_if", then_branch=inner_then, else_branch=inner_else),
            helper.make_node("Tanh", ["br"], ["acc_out"], name="body_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond_out"),
            helper.make_node("Mul", ["acc_out", "x"], ["scan_o"], name="body_scan"),
        ],
        "body",
        [io("i", dtype=I64), io("cond_in", dtype=B), io("acc_in", "n", 16)],
        [io("cond_out", dtype=B), io("acc_out", "n", 16), io("scan_o", "n", 16)],
        [init("start", 0.0), init("limit", 16.0), init("tiny", [0.01])],
    )
    return make_model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="xw"),
            helper.make_node("Loop", ["trips", "", "r"], ["final", "scans"], name="loop", body=body),
            helper.make_node("Add", ["final", "xw"], ["y"], name="add"),
            helper.make_node("ReduceMean", ["scans"], ["z"], name="mean", axes=[0], keepdims=0),
        ],
        [io("x", "n", 16)], [io("y", "n", 16), io("z", "n", 16)],
        [init("w", W), init("trips", 3, np.int64), init("delta", 1.0), init("half", [0.5]), init("zero", 0.0)],
        opset=13,
    )


def _scan() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("MatMul", ["state_in", "w"], ["m"], name="scan_mm"), helper.make_node("Add", ["m", "x_t"], ["sum"], name="scan_add"),
         helper.make_node("Tanh", ["sum"], ["state_out"], name="scan_tanh"), helper.make_node("Identity", ["state_out"], ["scan_out"], name="scan_id")],
        "scan_body", [io("state_in", 1, 16), io("x_t", 1, 16)], [io("state_out", 1, 16), io("scan_out", 1, 16)],
    )
    return make_model(
        [
            helper.make_node("Unsqueeze", ["x", "axis1"], ["xs"], name="unsq"),
            helper.make_node("Scan", ["init_state", "xs"], ["last", "all"], name="scan", body=body, num_scan_inputs=1),
            helper.make_node("ReduceMean", ["all"], ["m"], name="mean", axes=[1], keepdims=0),
            helper.make_node("Add", ["m", "last"], ["y"], name="add"),
        ],
        [io("x", "n", 16)], [io("y", "n", 16)], [init("w", W), init("init_state", np.zeros((1, 16))), init("axis1", [1], np.int64)],
        opset=13,
    )


def _body_types(model: onnx.ModelProto, node_name: str) -> dict[str, dict[str, int]]:
    """Element types inside each body of ``node_name``: strict inference on the built model
    (which fails on any type clash), then declarations and the op schemas from the enclosing
    scope's types (onnx does not annotate If branches)."""
    from fp16guard.graph.info import propagate_by_schema

    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    g = inferred.graph
    outer = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    outer.update({t.name: t.data_type for t in g.initializer})
    node = next(n for n in g.node if n.name == node_name)
    out = {}
    for attr in node.attribute:
        if attr.type != onnx.AttributeProto.GRAPH:
            continue
        body = attr.g
        types = dict(outer)
        types.update({v.name: v.type.tensor_type.elem_type for v in list(body.value_info) + list(body.input) + list(body.output)})
        types.update({t.name: t.data_type for t in body.initializer})
        propagate_by_schema(body, types, set(), opset_map(model))
        out[attr.name] = types
    return out


def _close(model, mixed, feeds, atol):
    ref, got = run_ort(model, feeds), run_ort(mixed, feeds)
    for a, b in zip(ref, got):
        assert a.dtype == b.dtype and np.allclose(a, b, atol=atol), float(np.abs(a - b).max())


# --- conversion -----------------------------------------------------------------------------


def test_if_runs_in_fp16_with_its_branches():
    model = _benign_if()
    mixed = to_mixed_precision(model, set())
    bodies = _body_types(mixed, "if")
    then_t, else_t = bodies["then_branch"], bodies["else_branch"]
    assert then_t["tm"] == then_t["t_out"] == H
    assert else_t["em"] == else_t["e_out"] == else_t["half"] == H
    graph_types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(mixed, strict_mode=True).graph.value_info}
    assert graph_types["branch"] == H
    # The captured weight is stored in FP16 only (no FP32 reader left); h is FP16 already.
    stored = {t.name: t.data_type for t in mixed.graph.initializer}
    assert stored == {"zero": H, "w__fp16": H}
    then_mm = next(n for n in {a.name: a.g for a in next(n for n in mixed.graph.node if n.name == "if").attribute}["then_branch"].node if n.name == "then_mm")
    assert then_mm.input == ["h", "w__fp16"]
    for seed in (0, 1, 2, 3):  # both branches
        _close(model, mixed, _x(seed), 2e-2)
    # The If kept FP32 by the plan: its bodies stay FP32 and read h through a Cast.
    kept = to_mixed_precision(model, {"if"})
    then_t = _body_types(kept, "if")["then_branch"]
    assert then_t["tm"] == then_t["t_out"] == F
    _close(model, kept, _x(0), 2e-2)


def test_loop_carried_state_scan_output_captures_and_fp32_body_nodes():
    model = _loop()
    mixed = to_mixed_precision(model, set())
    loop = next(n for n in mixed.graph.node if n.name == "loop")
    body = loop.attribute[0].g
    types = _body_types(mixed, "loop")["body"]
    # Loop-carried state and scan output: FLOAT16 on both sides of every iteration.
    assert [v.type.tensor_type.elem_type for v in body.input] == [I64, B, H]
    assert [v.type.tensor_type.elem_type for v in body.output] == [B, H, H]
    assert types["mm"] == types["s"] == types["br"] == H
    # Range has no FP16 kernel: it stays FP32 inside the body, reading the outer scalar in FP32,
    # and its result goes through a Cast to FP16.
    assert types["ramp"] == F and types["start"] == F
    rng_node = next(n for n in body.node if n.name == "body_range")
    assert rng_node.input[2] == "delta" and {t.name: t.data_type for t in mixed.graph.initializer}["delta"] == F
    reader = next(n for n in body.node if n.name == "body_ramp_scale")
    assert reader.input[0] == "ramp__to_fp16"
    # The nested If is FP16 too, reading the outer scalar 'half' in FP16.
    inner = next(n for n in body.node if n.name == "body_if")
    inner_types = {a.name: {v.name: v.type.tensor_type.elem_type for v in a.g.output} for a in inner.attribute if a.type == onnx.AttributeProto.GRAPH}
    assert inner_types == {"then_branch": {"it": H}, "else_branch": {"ie": H}}
    inner_then = next(a.g for a in inner.attribute if a.name == "then_branch")
    assert {t.name: t.data_type for t in mixed.graph.initializer}[inner_then.node[0].input[1]] == H  # 'half' in FP16
    # The outer weight is read in FP16 by the body and by the main graph's FP16 MatMul.
    assert next(n for n in body.node if n.name == "body_mm").input[1] == "w"
    for seed in (0, 1):
        _close(model, mixed, _x(seed), 3e-2)
    emulated = emulate_fp16_storage(mixed)
    ref, emu = run_ort(model, _x(0)), run_ort(emulated, _x(0))
    assert all(np.allclose(a, b, atol=3e-2) for a, b in zip(ref, emu))


def test_scan_runs_in_fp16():
    model = _scan()
    mixed = to_mixed_precision(model, set())
    types = _body_types(mixed, "scan")["body"]
    assert types["state_in"] == types["x_t"] == types["m"] == types["state_out"] == types["scan_out"] == H
    _close(model, mixed, _x(0), 3e-2)
    _, report = verify_mixed(model, set(), [_shard_of(_x(5))], VerifySettings())
    assert report["passed"], report["reason"]


def test_capture_read_in_both_precisions_keeps_the_fp32_original():
    """A body of an FP16 If reads an outer weight with an FP16 MatMul and an FP32-only op."""
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["tm"], name="then_mm"),
         helper.make_node("Range", ["zero", "lim", "step"], ["ramp"], name="then_range"),
         helper.make_node("Add", ["tm", "ramp"], ["t_out"], name="then_add")],
        "then", [], [io("t_out", "n", 16)],
    )
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["e_out"], name="else_mm")], "else", [], [io("e_out", "n", 16)])
    model = make_model(
        _cond_nodes() + [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)],
        [io("x", "n", 16)], [io("y", "n", 16)],
        [init("w", W), init("zero", 0.0), init("lim", 1.6), init("step", 0.1)],
    )
    mixed = to_mixed_precision(model, set())
    stored = {t.name: t.data_type for t in mixed.graph.initializer}
    then_b = next(n for n in mixed.graph.node if n.name == "if").attribute
    then_b = {a.name: a.g for a in then_b}["then_branch"]
    rng_node = next(n for n in then_b.node if n.name == "then_range")
    assert [stored[n] for n in rng_node.input] == [F, F, F]  # 0.1 not rounded to FP16
    mm = next(n for n in then_b.node if n.name == "then_mm")
    assert stored[mm.input[1]] == H and mm.input[0] == "x__to_fp16"
    for seed in (0, 1, 2, 3):
        _close(model, mixed, _x(seed), 3e-2)


def test_subgraph_slots_and_plan_default():
    model = _benign_if()
    types, opsets = tensor_types(model), opset_map(model)
    node = next(n for n in model.graph.node if n.name == "if")
    slots = fp16_slots(node, opsets, types)
    assert slots.status == "fp16" and slots.outputs == frozenset({0}) and slots.inputs == frozenset()
    plan = _plan(model, [_shard_of(_x(0))])
    entry = next(e for e in plan.fp32_nodes if e.name == "if")
    assert entry.reason == "has_subgraph"
    # Untyped body outputs (torch's If bodies): the node's own output gives the type; the
    # conversion declares them FLOAT16.
    untyped = onnx.ModelProto()
    untyped.CopyFrom(model)
    for attr in next(n for n in untyped.graph.node if n.name == "if").attribute:
        attr.g.output[0].type.tensor_type.elem_type = 0
    node = next(n for n in untyped.graph.node if n.name == "if")
    assert fp16_slots(node, opsets, tensor_types(untyped)).status == "fp16"
    mixed = to_mixed_precision(untyped, set())
    assert {a.name: a.g.output[0].type.tensor_type.elem_type for a in next(n for n in mixed.graph.node if n.name == "if").attribute} == {"then_branch": H, "else_branch": H}
    for seed in (0, 1, 2, 3):
        _close(model, mixed, _x(seed), 2e-2)
    # A body output that is not a tensor: the node cannot be converted at all.
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    node = next(n for n in broken.graph.node if n.name == "if")
    node.attribute[0].g.output[0].type.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(F, None)))
    assert fp16_slots(node, opsets, tensor_types(broken)).status == "unknown_type"


# --- emulation ------------------------------------------------------------------------------


def test_emulation_rounds_body_tensors_and_sees_their_overflow():
    model = _overflowing_if()
    mixed = to_mixed_precision(model, set())
    emulated = emulate_fp16_storage(mixed)
    body = {a.name: a.g for a in next(n for n in emulated.graph.node if n.name == "if").attribute}["then_branch"]
    producer = {o: n for n in body.node for o in n.output}
    back = producer["sq"]  # the body tensor is now the FP32 copy of its FP16-rounded value
    assert back.op_type == "Cast" and back.attribute[0].i == F
    assert producer[back.input[0]].op_type == "Cast" and producer[back.input[0]].attribute[0].i == H
    feeds = _x(0)
    (got,) = run_ort(emulated, feeds)
    assert np.isinf(got).any()  # (300 x)^2 overflows FP16 inside the branch
    (ref,) = run_ort(model, feeds)
    assert np.isfinite(ref).all()


# --- plan: rules + repair -------------------------------------------------------------------


def _shard_of(feeds, tmp=[]):
    import tempfile

    from fp16guard.io.shards import ShardRef

    if not tmp:
        tmp.append(tempfile.mkdtemp())
    path = f"{tmp[0]}/s{len(tmp)}.npz"
    tmp.append(path)
    np.savez(path, **feeds)
    return ShardRef(path.rsplit("/", 1)[1], path)


def test_repair_runs_a_benign_if_in_fp16(tmp_path):
    model = _benign_if()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    assert "if" in plan.fp32_names
    repaired = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    assert repaired.repair.outcome in ("all_fp16", "shrunk"), repaired.repair
    assert "if" not in repaired.fp32_names
    mixed, report = verify_mixed(model, repaired.fp32_names, _shards(tmp_path, count=1, seed=100, role="holdout"), VerifySettings())
    assert report["passed"], report["reason"]
    assert _body_types(mixed, "if")["then_branch"]["t_out"] == H


def test_repair_keeps_an_overflowing_if_fp32(tmp_path):
    model = _overflowing_if()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    assert plan.fp32_names == {"if"}, "the range rules must not see the body's overflow for the test to mean anything"
    repaired = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    assert repaired.repair.steps[0].phase == "all_fp16" and not repaired.repair.steps[0].passed
    assert "if" in repaired.fp32_names
    mixed, report = verify_mixed(model, repaired.fp32_names, _shards(tmp_path, count=1, seed=100, role="holdout"), VerifySettings())
    assert report["passed"], report["reason"]
    assert _body_types(mixed, "if")["then_branch"]["sq"] == F


def test_repair_runs_a_loop_in_fp16(tmp_path):
    model = _loop()
    calib = _shards(tmp_path)
    plan = _plan(model, calib)
    assert "loop" in plan.fp32_names
    repaired = repair_plan(model, plan, calib, PlanSettings(), VerifySettings())
    assert "loop" not in repaired.fp32_names, repaired.repair
    _, report = verify_mixed(model, repaired.fp32_names, _shards(tmp_path, count=1, seed=100, role="holdout"), VerifySettings())
    assert report["passed"], report["reason"]


def test_islands_never_move_a_subgraph_node_to_fp32():
    # The If's branches hold MatMuls: its run is work the per-element cost model cannot see, so
    # the islands pass leaves it FP16 even with FP32 nodes on both sides (silero VAD's decoder
    # LSTMs sit in such an If and were moved to FP32 as a "cheap" island).
    from fp16guard.plan.strategies.islands import merge_islands

    model = _benign_if()
    entries = [{"name": n, "op_type": "", "reason": "forced_name"} for n in ("relu", "add")]
    plan = merge_islands(model, {"threshold": 1e4, "fp32_nodes": entries, "counts": {}})
    assert not any("if" in island["nodes"] for island in plan["islands"])
    assert "if" not in {e["name"] for e in plan["fp32_nodes"]}
