"""Mixed-precision conversion: invariants, borders, special tensors; every result checked and run on ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.convert import to_mixed_precision
from fp16guard.errors import ConfigError
from fp16guard.io.model import load_model
from onnx_helpers import init as _init, io as _io, make_model as _model, run_ort as _run

F, H, D = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE






def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _x(n=4, d=8, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)}


def _chain():
    """x -> MatMul(w) -> Relu -> MatMul(w2) -> Sigmoid -> y; 'relu' is the FP32 island in tests."""
    rng = np.random.default_rng(0)
    return _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["z"], name="mm2"),
            helper.make_node("Sigmoid", ["z"], ["y"], name="sig"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [_init("w", rng.standard_normal((8, 8))), _init("w2", rng.standard_normal((8, 8)))],
    )


def _casts(model):
    return [n for n in model.graph.node if n.op_type == "Cast"]


def test_invariants_names_io_types_and_borders():
    model = _chain()
    before = model.SerializeToString()
    mixed = to_mixed_precision(model, {"relu"})
    assert model.SerializeToString() == before, "input model was modified"
    onnx.checker.check_model(mixed, full_check=True)
    # Every original node keeps its name and outputs (y is a graph output produced in FP16: renamed).
    originals = {n.name: list(n.output) for n in model.graph.node}
    converted = {n.name: list(n.output) for n in mixed.graph.node}
    for name, outs in originals.items():
        assert name in converted
        assert converted[name] == [("y__fp16" if o == "y" else o) for o in outs]
    # Graph I/O keep names and types.
    assert [(v.name, v.type.tensor_type.elem_type) for v in mixed.graph.input] == [("x", F)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in mixed.graph.output] == [("y", F)]
    types = _types(mixed)
    assert types["h"] == H and types["r"] == F and types["z"] == H and types["w"] == H
    # Casts only at borders: each changes the type, and there is exactly one per border crossing:
    # x (in->fp16), h (fp16->fp32 for relu), r (fp32->fp16 for mm2), y (fp16 -> fp32 output).
    casts = _casts(mixed)
    assert sorted(n.input[0] for n in casts) == ["h", "r", "x", "y__fp16"]
    for cast in casts:
        assert types[cast.input[0]] != types[cast.output[0]]
    (out_cast,) = [n for n in casts if n.output[0] == "y"]
    assert out_cast.name == "y__cast_to_fp32"
    # Runs on ORT and agrees with FP32.
    ref = _run(model, _x())[0]
    got = _run(mixed, _x())[0]
    assert got.dtype == np.float32 and np.allclose(got, ref, atol=5e-3)


def test_all_fp32_is_identity_and_conversion_is_deterministic():
    model = _chain()
    assert to_mixed_precision(model, {"mm1", "relu", "mm2", "sig"}).SerializeToString() == model.SerializeToString()
    assert to_mixed_precision(model, set()).SerializeToString() == to_mixed_precision(model, set()).SerializeToString()


def test_one_cast_per_tensor_and_direction_shared_by_consumers():
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="src"),
            helper.make_node("Exp", ["a"], ["b"], name="fp32_one"),
            helper.make_node("Neg", ["a"], ["c"], name="fp32_two"),
            helper.make_node("Add", ["b", "c"], ["y"], name="sum"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
    )
    mixed = to_mixed_precision(model, {"fp32_one", "fp32_two"})
    casts_of_a = [n for n in _casts(mixed) if n.input[0] == "a"]
    assert len(casts_of_a) == 1
    readers = [n.input[0] for n in mixed.graph.node if n.name in ("fp32_one", "fp32_two")]
    assert readers == [casts_of_a[0].output[0]] * 2 == ["a__to_fp32"] * 2
    assert np.allclose(_run(mixed, _x())[0], _run(model, _x())[0], atol=1e-2)


def test_unknown_fp32_node_is_a_user_error():
    with pytest.raises(ConfigError, match="not in the model"):
        to_mixed_precision(_chain(), {"nope"})


def test_split_outputs_go_to_different_precisions():
    model = _model(
        [
            helper.make_node("Split", ["x", "sizes"], ["s0", "s1"], name="split", axis=1),
            helper.make_node("Exp", ["s0"], ["e"], name="fp32_exp"),
            helper.make_node("Relu", ["s1"], ["r"], name="relu"),
            helper.make_node("Concat", ["e", "r"], ["y"], name="concat", axis=1),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [_init("sizes", [3, 5], np.int64)],
    )
    mixed = to_mixed_precision(model, {"fp32_exp"})
    types = _types(mixed)
    split = next(n for n in mixed.graph.node if n.name == "split")
    assert list(split.output) == ["s0", "s1"] and types["s0"] == H and types["s1"] == H
    assert types["e"] == F and types["r"] == H
    assert sorted(n.input[0] for n in _casts(mixed)) == ["e", "s0", "x", "y__fp16"]
    assert np.allclose(_run(mixed, _x())[0], _run(model, _x())[0], atol=1e-2)


def test_resize_scales_stay_float():
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu"),
            helper.make_node("Resize", ["a", "", "scales"], ["y"], name="resize", mode="nearest"),
        ],
        [_io("x", 1, 1, 4, 4)],
        [_io("y", 1, 1, 8, 8)],
        [_init("scales", [1.0, 1.0, 2.0, 2.0])],
    )
    mixed = to_mixed_precision(model, set())
    types = _types(mixed)
    assert types["scales"] == F and types["a"] == H
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)}
    assert np.allclose(_run(mixed, feeds)[0], _run(model, feeds)[0], atol=1e-2)


def test_shared_initializer_is_duplicated_and_unshared_converted_in_place():
    model = _model(
        [
            helper.make_node("Add", ["x", "bias"], ["a"], name="fp16_add"),
            helper.make_node("Mul", ["a", "bias"], ["b"], name="fp32_mul"),
            helper.make_node("Mul", ["b", "gain"], ["y"], name="fp16_gain"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
        [_init("bias", np.full(8, 0.5)), _init("gain", np.full(8, 2.0))],
    )
    mixed = to_mixed_precision(model, {"fp32_mul"})
    inits = {t.name: t.data_type for t in mixed.graph.initializer}
    assert inits == {"bias": F, "gain": H, "bias__fp16": H}
    add = next(n for n in mixed.graph.node if n.name == "fp16_add")
    assert list(add.input) == ["x__to_fp16", "bias__fp16"]
    assert np.allclose(_run(mixed, _x())[0], _run(model, _x())[0], atol=1e-2)


def test_constants_cast_to_float_and_double_inside_fp16_region():
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.array([1.5], np.float32))),
            helper.make_node("Constant", [], ["cf"], name="const_f", value_floats=[0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]),
            helper.make_node("Shape", ["x"], ["shape"], name="shape"),
            helper.make_node("ConstantOfShape", ["shape"], ["ones"], name="fill", value=numpy_helper.from_array(np.array([1.0], np.float32))),
            helper.make_node("ConstantOfShape", ["shape"], ["zeros"], name="zero_fill"),
            helper.make_node("Cast", ["shape"], ["shape_f"], name="cast_shape", to=F),
            helper.make_node("ReduceSum", ["shape_f"], ["n"], name="count", keepdims=0),
            helper.make_node("Mul", ["x", "c"], ["a"], name="mul"),
            helper.make_node("Mul", ["a", "cf"], ["a2"], name="mul_f"),
            helper.make_node("Add", ["a2", "ones"], ["b"], name="add"),
            helper.make_node("Add", ["b", "zeros"], ["b2"], name="add0"),
            helper.make_node("Div", ["b2", "n"], ["y"], name="div"),
            helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=D),
            helper.make_node("Mul", ["xd", "two_d"], ["yd"], name="double_mul"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8), _io("yd", 4, 8, dtype=D)],
        [_init("two_d", [2.0], np.float64)],
    )
    mixed = to_mixed_precision(model, set())
    types = _types(mixed)
    for name in ("c", "cf", "ones", "zeros", "shape_f", "n", "y__fp16"):
        assert types[name] == H, name
    assert types["xd"] == D and types["yd"] == D and types["two_d"] == D
    cast_shape = next(n for n in mixed.graph.node if n.name == "cast_shape")
    assert cast_shape.attribute[0].i == H
    ref, got = _run(model, _x()), _run(mixed, _x())
    assert np.allclose(got[0], ref[0], atol=1e-2)
    # DOUBLE tensors keep their type; the Cast to double now reads x in FP16.
    assert np.allclose(got[1], ref[1], atol=1e-2)


def test_subgraph_reads_outer_tensor_through_fp32_cast():
    then_g = helper.make_graph([helper.make_node("Relu", ["a"], ["t"], name="then_relu")], "then", [], [_io("t", 4, 8)])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e"], name="else_neg")], "else", [], [_io("e", 4, 8)])
    model = _model(
        [
            helper.make_node("Sigmoid", ["x"], ["a"], name="sig"),
            helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
        ],
        [_io("x", 4, 8), _io("cond", dtype=TensorProto.BOOL)],
        [_io("y", 4, 8)],
    )
    mixed = to_mixed_precision(model, {"branch"})  # the If kept FP32 by the plan
    branch = next(n for n in mixed.graph.node if n.name == "branch")
    assert branch.attribute[0].g.node[0].input[0] == "a__to_fp32"
    assert _types(mixed)["a"] == H
    for cond in (True, False):
        feeds = {**_x(), "cond": np.array(cond)}
        assert np.allclose(_run(mixed, feeds)[0], _run(model, feeds)[0], atol=1e-3)


def test_new_names_avoid_collisions():
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["x__to_fp16"], name="x__cast_to_fp16"),
            helper.make_node("Add", ["x", "x__to_fp16"], ["y"], name="add"),
        ],
        [_io("x", 4, 8)],
        [_io("y", 4, 8)],
    )
    mixed = to_mixed_precision(model, set())
    names = [o for n in mixed.graph.node for o in n.output]
    assert len(names) == len(set(names))
    cast = next(n for n in _casts(mixed) if n.input[0] == "x")
    assert cast.output[0] == "x__to_fp16_2" and cast.name == "x__cast_to_fp16_2"
    assert np.allclose(_run(mixed, _x())[0], _run(model, _x())[0], atol=1e-2)


def test_external_data_model(tmp_path):
    model = _chain()
    ref = _run(model, _x())[0]
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    loaded = load_model(path)
    mixed = to_mixed_precision(loaded, {"relu"})
    out = tmp_path / "mixed.onnx"
    onnx.save(mixed, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location="mixed.data", size_threshold=0)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, _x())[0]
    assert np.allclose(got, ref, atol=5e-3)
    assert (tmp_path / "mixed.data").stat().st_size > 0


def test_values_beyond_fp16_are_not_clamped():
    model = _model([helper.make_node("Add", ["x", "big"], ["y"], name="add")], [_io("x", 4, 8)], [_io("y", 4, 8)], [_init("big", [1.0e5])])
    mixed = to_mixed_precision(model, set())
    (big,) = [t for t in mixed.graph.initializer if t.name == "big"]
    assert np.isinf(numpy_helper.to_array(big)).all()


def test_value_info_follows_new_types():
    model = onnx.shape_inference.infer_shapes(_chain())
    assert {v.name for v in model.graph.value_info} == {"h", "r", "z"}
    mixed = to_mixed_precision(model, {"relu"})
    declared = {v.name: v.type.tensor_type.elem_type for v in mixed.graph.value_info}
    assert declared["h"] == H and declared["r"] == F and declared["z"] == H
    assert declared["h__to_fp32"] == F and declared["r__to_fp16"] == H and declared["y__fp16"] == H
    # Shapes carried over to the new tensors.
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in mixed.graph.value_info}
    assert shapes["h__to_fp32"] == [4, 8]
