"""The per-node cost model (fp16guard.plan.cost) on tiny models built in code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fp16guard.plan.cost import NOMINAL_FLOPS, FP16Share, fmt_share, fp16_share, fp32_cost, node_costs
from tests.onnx_helpers import init, io, make_model


def _conv_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    return make_model(nodes, [io("x", "N", 3, 16, 16)], [io("y", "N", 8, 8, 8)], [init("w", w)])


def test_conv_flops_follow_the_formula_and_symbolic_batch_is_one():
    costs = node_costs(_conv_model())
    conv = costs["conv"]
    # 2 × output elements (N=1, 8×8×8) × C_in/group × kernel (3×3×3)
    assert conv.flops == 2 * (1 * 8 * 8 * 8) * (3 * 3 * 3)
    assert conv.compute and conv.op_type == "Conv"
    # bytes: float x (3·16·16) + w (8·3·3·3) + c (8·8·8), 4 bytes each
    assert conv.bytes == 4 * (3 * 16 * 16 + 8 * 3 * 3 * 3 + 8 * 8 * 8)
    relu = costs["relu"]
    assert not relu.compute and relu.flops == 8 * 8 * 8


def test_conv_with_given_batch_scales():
    costs = node_costs(_conv_model(), {"x": [4, 3, 16, 16]})
    assert costs["conv"].flops == 2 * (4 * 8 * 8 * 8) * 27


def _matmul_model():
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    inits = [init("w1", rng.standard_normal((64, 128))), init("w2", rng.standard_normal((128, 10)))]
    return make_model(nodes, [io("x", "batch", "seq", 64)], [io("y", "batch", "seq", 10)], inits)


def test_matmul_with_symbolic_batch_uses_input_shapes():
    model = _matmul_model()
    one = node_costs(model)
    assert one["mm1"].flops == 2 * 1 * 1 * 128 * 64
    costs = node_costs(model, {"x": (16, 5, 64)})
    assert costs["mm1"].flops == 2 * 16 * 5 * 128 * 64
    assert costs["mm2"].flops == 2 * 16 * 5 * 10 * 128
    assert costs["relu"].flops == 16 * 5 * 128


def test_share_of_a_plan_with_one_matmul_pinned():
    costs = node_costs(_matmul_model(), {"x": (16, 5, 64)})
    share = fp16_share(costs, ["mm1"])
    total = sum(c.flops for c in costs.values())
    assert share.flops_total == pytest.approx(total)
    assert share.flops_fp16 == pytest.approx(total - costs["mm1"].flops)
    assert share.share_flops == pytest.approx((total - costs["mm1"].flops) / total)
    assert (share.compute_nodes_total, share.compute_nodes_fp16) == (2, 1)
    assert (share.nodes_total, share.nodes_fp32) == (3, 1)
    assert fp32_cost(costs, ["mm1", "not-a-node"]) == costs["mm1"].flops
    assert "of the estimated FLOPs (1 of 2 Conv/Gemm/MatMul nodes)" in share.describe()
    record = share.to_dict()
    assert record["summary"] == share.describe()
    assert FP16Share.from_dict(record) == share
    everything = fp16_share(costs, [])
    assert everything.share_flops == 1.0 and everything.describe().startswith("FP16 runs 100% ")
    nothing = fp16_share(costs, list(costs))
    assert nothing.share_flops == 0.0 and nothing.describe().startswith("FP16 runs 0% ")


def test_a_node_without_shapes_does_not_crash():
    # A custom-domain op: shape inference knows nothing of its output, nor of what follows it.
    graph = helper.make_graph(
        [
            helper.make_node("Mystery", ["x"], ["m"], name="mystery", domain="custom.ops"),
            helper.make_node("MatMul", ["m", "w"], ["y"], name="mm"),
            helper.make_node("Einsum", ["m", "m"], ["e"], name="ein", equation="ij,ij->i"),
            helper.make_node("LayerNormalization", ["m", "g"], ["ln"], name="ln", axis=-1),
        ],
        "g", [io("x", 2, 8)], [io("y", None, None), io("e", None), io("ln", None, None)],
        initializer=[init("w", np.ones((8, 4))), init("g", np.ones(8))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    costs = node_costs(model)
    assert costs["mystery"].flops == NOMINAL_FLOPS and not costs["mystery"].compute
    # From what is known (the weight): at least one row times the weight.
    assert costs["mm"].compute and costs["mm"].flops >= 2 * 8 * 4
    assert costs["ein"].flops >= NOMINAL_FLOPS and costs["ln"].flops >= NOMINAL_FLOPS
    assert fp16_share(costs, ["mystery"]).share_flops is not None


def test_gemm_einsum_lstm_and_if_body():
    rng = np.random.default_rng(2)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "wb"], ["t"], name="inner_mm")], "then", [], [io("t", 2, 6)]
    )
    else_graph = helper.make_graph([helper.make_node("Identity", ["a"], ["t2"], name="inner_id")], "else", [], [io("t2", 2, 6)])
    nodes = [
        helper.make_node("Gemm", ["x", "wg"], ["a"], name="gemm", transB=1),
        helper.make_node("Einsum", ["a", "a"], ["e"], name="ein", equation="bi,bj->bij"),
        helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("LSTM", ["seq", "W", "R"], ["Y"], name="lstm", hidden_size=5),
    ]
    inits = [
        init("wg", rng.standard_normal((6, 4))), init("wb", rng.standard_normal((6, 6))),
        init("W", rng.standard_normal((1, 20, 3))), init("R", rng.standard_normal((1, 20, 5))),
    ]
    model = make_model(
        nodes, [io("x", 2, 4), io("cond", dtype=TensorProto.BOOL), io("seq", 7, 2, 3)],
        [io("e", 2, 6, 6), io("z", None, None), io("Y", 7, 1, 2, 5)], inits,
    )
    costs = node_costs(model)
    assert costs["gemm"].flops == 2 * 2 * 6 * 4
    assert costs["ein"].flops == 2 * 2 * 6 * 6
    assert costs["branch"].compute and costs["branch"].flops == 2 * 2 * 6 * 6
    assert "inner_mm" not in costs  # charged to its If
    assert costs["lstm"].flops == 2 * 7 * 2 * 1 * 20 * (3 + 5)


def test_weights_stay_out_and_large_constants_are_not_copied(tmp_path):
    from onnx.external_data_helper import convert_model_to_external_data

    from fp16guard.io.model import load_graph

    rng = np.random.default_rng(3)
    big = rng.standard_normal((256, 256)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["k"], name="const", value=onnx.numpy_helper.from_array(big, "k")),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("MatMul", ["h", "k"], ["y"], name="mm2"),
    ]
    model = make_model(nodes, [io("x", "N", 256)], [io("y", "N", 256)], [init("w", big)])
    convert_model_to_external_data(model, location="model.onnx.data", size_threshold=1024)
    onnx.save(model, tmp_path / "model.onnx")
    graph_only = load_graph(tmp_path / "model.onnx")
    costs = node_costs(graph_only, {"x": [3, 256]})
    assert costs["mm"].flops == 2 * 3 * 256 * 256
    assert costs["mm2"].flops == 2 * 3 * 256 * 256


def test_fmt_share_never_rounds_to_the_ends():
    assert fmt_share(0.0) == "0%" and fmt_share(1.0) == "100%"
    assert fmt_share(0.004) == "0.4%" and fmt_share(0.97) == "97%"
    assert fmt_share(0.9996) == "99.96%" and fmt_share(None) == "?"
