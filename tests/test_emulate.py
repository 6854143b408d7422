"""FP16 storage emulation on the CPU provider, and the key end-to-end property of the plan.

The integration test measures real statistics with ``fp16guard.stats.collect`` on an FP32 model that
overflows FP16 twice (a ~1e5 hidden activation and a T5-style RMSNorm whose Pow overflows),
plans, converts and emulates: all-FP16 breaks, the plan holds, and pinning only the producers of
large tensors (the seed recipe) does not (docs/FACTS.md #3, #4).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.convert import to_mixed_precision
from fp16guard.io.shards import discover_shards
from fp16guard.graph.emulate import emulate_fp16_storage
from fp16guard.plan.planner import make_plan
from fp16guard.settings import PlanSettings
from fp16guard.stats.collect import reduce_stats, shard_stats
from onnx_helpers import io as _io, make_model as _model, run_ort as _run

F, H = TensorProto.FLOAT, TensorProto.FLOAT16
LEVELS = [
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
]





def _rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("level", LEVELS, ids=lambda l: str(l).rsplit(".", 1)[-1])
def test_rounding_survives_every_optimisation_level(level):
    model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")], [_io("x", 3)], [_io("y", 3)])
    emulated = emulate_fp16_storage(to_mixed_precision(model, set()))
    x = np.array([1.0 + 2.0**-12, 1.0e5, 3.0], np.float32)  # not FP16-representable, too large, exact
    (y,) = _run(emulated, {"x": x}, level)
    assert y[0] == -1.0, "rounding through FP16 was folded away"
    assert np.isneginf(y[1]), "FP16 overflow was not reproduced"
    assert y[2] == -3.0
    (ref,) = _run(model, {"x": x}, level)
    assert ref[0] != -1.0 and np.isfinite(ref[1])


def test_fp16_io_model_keeps_io_types_and_matches_numpy_storage():
    k = numpy_helper.from_array(np.full(8, 3.0, np.float16), "k")
    model = _model(
        [
            helper.make_node("Mul", ["x", "k"], ["m"], name="mul"),
            helper.make_node("Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.array([0.1], np.float16))),
            helper.make_node("Add", ["m", "c"], ["y"], name="add"),
            helper.make_node("Relu", ["y"], ["y2"], name="relu"),
            helper.make_node("Cast", ["n"], ["nh"], name="cast_n", to=H),
            helper.make_node("Mul", ["y2", "nh"], ["y3"], name="scale"),
        ],
        [_io("x", 4, 8, dtype=H), _io("n", 1, dtype=TensorProto.INT64)],
        [_io("y", 4, 8, dtype=H), _io("y3", 4, 8, dtype=H)],
        [k],
    )
    emulated = emulate_fp16_storage(model)
    assert [(v.name, v.type.tensor_type.elem_type) for v in emulated.graph.input] == [("x", H), ("n", TensorProto.INT64)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in emulated.graph.output] == [("y", H), ("y3", H)]
    assert all(t.data_type == F for t in emulated.graph.initializer)
    x = (np.random.default_rng(0).standard_normal((4, 8)) * 1e4).astype(np.float16)
    n = np.array([7], np.int64)
    y, y3 = _run(emulated, {"x": x, "n": n})
    with np.errstate(over="ignore"):  # the overflow to inf is what we compare
        m = (x.astype(np.float32) * np.float32(3.0)).astype(np.float16)
        ref_y = (m.astype(np.float32) + np.float32(np.float16(0.1))).astype(np.float16)
        ref_y3 = (np.maximum(ref_y, 0).astype(np.float32) * np.float32(7)).astype(np.float16)
    assert y.dtype == np.float16 and np.array_equal(y, ref_y)
    assert np.array_equal(y3, ref_y3, equal_nan=True) and np.isinf(y3).any()  # 3e4 * 7 overflows


def test_every_fp16_tensor_is_rounded():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Exp", ["r"], ["e"], name="exp"),
            helper.make_node("Tanh", ["e"], ["y"], name="tanh"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [w],
    )
    mixed = to_mixed_precision(model, {"exp"})
    emulated = emulate_fp16_storage(mixed)
    producer = {o: n for n in emulated.graph.node for o in n.output}
    fp16_outputs = ["h", "r", "y__fp16"]
    for name in fp16_outputs:
        cast_back = producer[name]
        assert cast_back.op_type == "Cast" and cast_back.attribute[0].i == F, name
        rounding = producer[cast_back.input[0]]
        assert rounding.op_type == "Cast" and rounding.attribute[0].i == H, name
    inferred = onnx.shape_inference.infer_shapes(emulated, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    rounded = {o for n in emulated.graph.node if n.op_type == "Cast" and n.attribute[0].i == H for o in n.output}
    assert {n for n, t in types.items() if t == H} == rounded
    assert [(v.name, v.type.tensor_type.elem_type) for v in emulated.graph.output] == [("y", F)]
    x = {"x": rng.standard_normal((4, 8)).astype(np.float32)}
    assert np.allclose(_run(emulated, x)[0], _run(model, x)[0], atol=1e-2)


def _f16(values) -> np.ndarray:
    """Round to FP16 (round to nearest even, as onnxruntime's Cast) and back to FP32."""
    return np.asarray(values, np.float32).astype(np.float16).astype(np.float32)


def test_emulated_if_bodies_round_like_fp16_storage():
    """Both bodies of an If are emulated, exactly: every FP16 tensor, in the bodies too, holds
    its FP32 value rounded to FP16.

    Exact, not within a tolerance: the graph has only Mul and Neg, and the product of two
    FP16 values is exact in FP32 (11-bit significands make at most 22 bits, FP32 holds 24), so
    FP16 storage makes each value the FP16 rounding of an exact product, which NumPy computes
    bit for bit. A wrong branch, a body left in FP32 (its inner tensor not rounded) and the FP32
    model each differ from that reference, as asserted below, so each would fail this test.
    """
    k = {"k0": 0.7, "k1": 1 / 3, "k2": 3.0, "k3": 0.1}
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["a", "k1"], ["t1"], name="then_mul1"), helper.make_node("Mul", ["t1", "k2"], ["t"], name="then_mul2")],
        "then", [], [_io("t", 4, 8)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Mul", ["a", "k3"], ["e1"], name="else_mul"), helper.make_node("Neg", ["e1"], ["e"], name="else_neg")],
        "else", [], [_io("e", 4, 8)],
    )
    model = _model(
        [
            helper.make_node("Mul", ["x", "k0"], ["a"], name="scale"),
            helper.make_node("If", ["cond"], ["b"], name="branch", then_branch=then_g, else_branch=else_g),
            helper.make_node("Neg", ["b"], ["y"], name="neg"),
        ],
        [_io("x", 4, 8), _io("cond", dtype=TensorProto.BOOL)],
        [_io("y", 4, 8)],
        [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in k.items()],
    )
    emulated = emulate_fp16_storage(to_mixed_precision(model, set()))
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32) * 100
    kh = {n: _f16(v) for n, v in k.items()}  # the converted model stores its constants in FP16
    a = _f16(_f16(x) * kh["k0"])
    expected = {True: -_f16(_f16(a * kh["k1"]) * kh["k2"]), False: _f16(a * kh["k3"])}
    fp32_body = -_f16(a * kh["k1"] * kh["k2"])  # the then body without rounding its inner t1
    assert not np.array_equal(expected[True], fp32_body)
    assert not np.array_equal(expected[True], -expected[False])
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        assert not np.array_equal(_run(model, feeds)[0], expected[cond])  # FP32 is distinguishable
        for level in LEVELS:  # onnxruntime's graph optimisations must not undo the rounding
            np.testing.assert_array_equal(_run(emulated, feeds, level)[0], expected[cond], err_msg=f"cond={cond} level={level}")


# --- the key integration test -------------------------------------------------------------

HIDDEN = 64


def overflow_model(seed: int = 0) -> onnx.ModelProto:
    """x(16) + b -> MatMul (hidden peaks ~1e5) -> Relu -> MatMul (|h| ~ 1e3) -> RMSNorm -> * gamma."""
    rng = np.random.default_rng(seed)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    inits = [
        init("b0", rng.standard_normal(16) * 0.1),
        init("w1", rng.uniform(-1, 1, (16, HIDDEN)) * 1.3e4),
        init("w2", rng.standard_normal((HIDDEN, 32)) * 6e-3),
        init("two", [2.0]),
        init("eps", [1e-6]),
        init("gamma", rng.uniform(0.5, 1.5, 32)),
    ]
    nodes = [
        helper.make_node("Add", ["x", "b0"], ["x1"], name="in/add"),
        helper.make_node("MatMul", ["x1", "w1"], ["h1"], name="ffn/up"),
        helper.make_node("Relu", ["h1"], ["a1"], name="ffn/relu"),
        helper.make_node("MatMul", ["a1", "w2"], ["h"], name="ffn/down"),
        helper.make_node("Pow", ["h", "two"], ["sq"], name="norm/pow"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], name="norm/mean", axes=[-1], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"], name="norm/add_eps"),
        helper.make_node("Sqrt", ["mse"], ["rms"], name="norm/sqrt"),
        helper.make_node("Div", ["h", "rms"], ["hn"], name="norm/div"),
        helper.make_node("Mul", ["hn", "gamma"], ["y"], name="out/gamma"),
    ]
    return _model(nodes, [_io("x", "batch", 16)], [_io("y", "batch", 32)], inits)


def _samples(n: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def overflow_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overflow")
    model = overflow_model()
    model_path = folder / "model.onnx"
    onnx.save(model, str(model_path))
    calib = folder / "calib"
    calib.mkdir()
    for i in range(2):
        np.savez(calib / f"s{i}.npz", **_samples(16, seed=10 + i))
    stats = reduce_stats(shard_stats(model_path, ref) for ref in discover_shards([calib]))
    holdout = _samples(32, seed=99)
    (reference,) = _run(model, holdout)
    return model, stats, holdout, reference


def test_overflow_model_really_overflows_fp16(overflow_case):
    _, stats, _, _ = overflow_case
    max_abs = dict(zip(stats.column("tensor").to_pylist(), stats.column("max_abs").to_pylist()))
    assert 65504 < max_abs["h1"] < 1e6
    assert 300 < max_abs["h"] < 10000 < max_abs["sq"]
    assert max_abs["hn"] < 100


def test_plan_fixes_overflow_that_all_fp16_shows(overflow_case):
    model, stats, holdout, reference = overflow_case
    plan = make_plan(model, stats, PlanSettings())
    assert plan.fp32_names == {"ffn/up", "ffn/relu", "ffn/down", "norm/pow", "norm/mean", "norm/add_eps", "norm/sqrt"}
    assert {e["name"]: e["reason"] for e in plan.fp32_nodes}["ffn/down"] == "input_above_threshold"

    (all_fp16,) = _run(emulate_fp16_storage(to_mixed_precision(model, set())), holdout)
    assert _rel_error(all_fp16, reference) > 0.5, "all-FP16 emulation should be non-finite or far off"

    planned_model = to_mixed_precision(model, plan.fp32_names)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        (planned,) = _run(emulate_fp16_storage(planned_model), holdout, level)
        assert np.all(np.isfinite(planned))
        assert _rel_error(planned, reference) < 1e-2
    # The planned model itself also runs on the CPU provider.
    (direct,) = _run(planned_model, holdout)
    assert _rel_error(direct, reference) < 1e-2


def test_rmsnorm_alone_is_finite_but_wrong_in_fp16(overflow_case):
    # docs/FACTS.md #4: with only the hidden layer pinned, Pow overflows and h / inf = 0: finite, wrong.
    model, _, holdout, reference = overflow_case
    (got,) = _run(emulate_fp16_storage(to_mixed_precision(model, {"ffn/up", "ffn/relu", "ffn/down"})), holdout)
    assert np.all(np.isfinite(got))
    assert _rel_error(got, reference) > 0.5


def test_pinning_only_producers_is_not_enough(overflow_case):
    # docs/FACTS.md #3: keep FP32 only the nodes that *produce* a tensor above the threshold.
    model, stats, holdout, reference = overflow_case
    threshold = PlanSettings().threshold
    large = {t for t, m in zip(stats.column("tensor").to_pylist(), stats.column("max_abs").to_pylist()) if m > threshold}
    producers_only = {n.name for n in model.graph.node if set(n.output) & large}
    assert producers_only == {"ffn/up", "ffn/relu", "norm/pow", "norm/mean", "norm/add_eps"}
    (got,) = _run(emulate_fp16_storage(to_mixed_precision(model, producers_only)), holdout)
    assert _rel_error(got, reference) > 0.5, "producer-only pinning should still break the output"
