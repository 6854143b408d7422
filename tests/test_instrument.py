"""float_tensors and instrument on tiny models, checked against numpy with real onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.instrument import FP16_MIN_NORMAL, SAMPLE, constant_model, constant_tensors, float_tensors, instrument, output_names, underflow_names, underflow_supported
from fp16guard.io.model import normalize_model
from fp16guard.runners.onnxrt import OnnxRuntimeRunner

F = TensorProto.FLOAT


def _mixed_model(opset: int) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> Split(2) / TopK(values, indices) / Shape (int) / Constant."""
    w = numpy_helper.from_array(np.linspace(-3, 3, 8 * 6, dtype=np.float32).reshape(8, 6), "w")
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    split_kw = {"num_outputs": 2} if opset >= 18 else {}
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),  # unnamed on purpose
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Split", ["r"], ["s0", "s1"], name="split", axis=1, **split_kw),
        helper.make_node("TopK", ["a", "k"], ["tv", "ti"], name="topk", axis=1),
        helper.make_node("Shape", ["a"], ["shape"], name="shape"),
        helper.make_node("Constant", [], ["c"], name="const", value=numpy_helper.from_array(np.array([7.5, -9.0], np.float32))),
        helper.make_node("Mul", ["s0", "s1"], ["y"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 8]), helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", F, ["N", 3]), helper.make_tensor_value_info("tv", F, ["N", 2]), helper.make_tensor_value_info("c", F, [2])],
        [w, k],
    )
    return normalize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _reference(x: np.ndarray) -> dict[str, np.ndarray]:
    w = np.linspace(-3, 3, 8 * 6, dtype=np.float32).reshape(8, 6)
    a = x @ w
    r = np.maximum(a, 0)
    s0, s1 = r[:, :3], r[:, 3:]
    return {"x": x, "a": a, "r": r, "s0": s0, "s1": s1, "tv": -np.sort(-a, axis=1)[:, :2], "c": np.array([7.5, -9.0], np.float32), "y": s0 * s1}


def test_float_tensors_lists_every_float_output_in_graph_order():
    tensors = float_tensors(_mixed_model(18))
    assert [t.name for t in tensors] == ["x", "a", "r", "s0", "s1", "tv", "c", "y"]
    assert [t.order for t in tensors] == list(range(8))
    by = {t.name: t for t in tensors}
    assert (by["x"].producer, by["x"].op_type, by["x"].output_index) == ("", "", -1)
    assert (by["a"].producer, by["a"].op_type) == ("MatMul_0", "MatMul")  # named by load/normalize
    assert (by["s1"].producer, by["s1"].output_index) == ("split", 1)
    assert (by["tv"].producer, by["tv"].output_index) == ("topk", 0)
    assert "ti" not in by and "shape" not in by and "ids" not in by and "w" not in by  # int, initializer


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_instrumented_statistics_match_numpy(opset):
    model = _mixed_model(opset)
    tensors = float_tensors(model)
    inst = instrument(model, tensors)
    onnx.checker.check_model(inst)
    x = np.random.default_rng(opset).normal(size=(5, 8)).astype(np.float32)
    ref = _reference(x)
    with OnnxRuntimeRunner(inst) as runner:
        out = runner.infer({"x": x, "ids": np.zeros(5, np.int64)})
    assert len(out) == (9 if opset >= 10 else 3) * len(tensors)  # min, max, flag + six underflow figures
    for k, t in enumerate(tensors):
        mn, mx, nf = (out[n] for n in output_names(k))
        assert mn.shape == () and mx.shape == () and nf.shape == ()
        assert float(mn) == pytest.approx(float(ref[t.name].min()), rel=1e-5, abs=1e-5), t.name
        assert float(mx) == pytest.approx(float(ref[t.name].max()), rel=1e-5, abs=1e-5), t.name
        assert np.isfinite(nf)
        if opset >= 10:
            _check_underflow(out, k, ref[t.name])


def _check_underflow(out, k, arr):
    """The underflow figures of tensor k against numpy on ``arr`` (smaller than 2 x SAMPLE, so the
    sample is every element)."""
    assert arr.size < 2 * SAMPLE
    nz, below, below_sum, abs_sum, min_nz, examined = (out[n] for n in underflow_names(k))
    a = np.abs(arr.astype(np.float64)).ravel()
    small = a[(a > 0) & (a < FP16_MIN_NORMAL)]
    assert int(examined) == arr.size
    assert float(nz) == np.count_nonzero(a)
    assert float(below) == np.count_nonzero(a < FP16_MIN_NORMAL)  # zeros included
    assert float(below_sum) == pytest.approx(small.sum(), rel=1e-5, abs=1e-30)
    assert float(abs_sum) == pytest.approx(a.sum(), rel=1e-5)
    assert float(min_nz) == (a[a > 0].min() if np.any(a > 0) else np.inf)


def test_relu_statistics_are_derived_from_its_input_without_reductions():
    model = _mixed_model(18)
    tensors = float_tensors(model)
    inst = instrument(model, tensors)
    ranged = {n.input[0] for n in inst.graph.node if n.op_type in ("ReduceMin", "ReduceMax")}
    assert "a" in ranged and "r" not in ranged
    assert not any(n.op_type == "Abs" and n.input[0] == "r" for n in inst.graph.node)  # non-negative already


@pytest.mark.parametrize("opset", [9, 10, 13, 18])
def test_underflow_figures_are_exact_at_the_fp16_normal_boundary(opset):
    t = np.float32(FP16_MIN_NORMAL)
    below = np.nextafter(t, np.float32(0))
    x = np.array([[0.0, t, -below, below, 1e-30, -3e-8, 7e-5, -5e-5, 2.0, 0.0, -t, 65504.0]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"], name="neg"), helper.make_node("Relu", ["n"], ["r"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 12])],
        [helper.make_tensor_value_info("r", F, ["N", 12])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    tensors = float_tensors(model)
    with OnnxRuntimeRunner(instrument(model, tensors)) as runner:
        out = runner.infer({"x": x})
    for k, arr in enumerate([x, -x, np.maximum(-x, 0)]):
        _check_underflow(out, k, arr)
    assert float(out[underflow_names(0)[1]]) == 2 + 5  # two zeros, five tiny non-zero values


@pytest.mark.parametrize("opset", [9, 13])  # 9: Gather sample with masked positions; 13: strided Slice
def test_large_tensors_are_sampled_evenly(opset):
    n = 9 * SAMPLE + 3
    x = np.where(np.arange(n) % 4 == 0, 1e-6, 1.0).astype(np.float32)[None, :]  # a quarter tiny, spread out
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"], name="neg")], "g", [helper.make_tensor_value_info("x", F, [1, n])], [helper.make_tensor_value_info("y", F, [1, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    with OnnxRuntimeRunner(instrument(model, float_tensors(model))) as runner:
        out = runner.infer({"x": x})
    names = underflow_names(1)
    examined = int(out[names[5]])
    assert examined == len(range(0, n, 2 * (n // (2 * SAMPLE)) + 1)) <= 2 * SAMPLE
    assert float(out[names[1]]) / examined == pytest.approx(0.25, abs=0.01)  # the sample sees the same share
    assert float(out[names[2]]) / float(out[names[3]]) == pytest.approx(0.25e-6 / 0.75, rel=0.05)


@pytest.mark.parametrize("opset, extra, supported, outputs", [(8, None, False, 3), (9, None, True, 9), (9, "NonZero", False, 3), (10, "NonZero", True, 9)])
def test_underflow_figures_by_opset(opset, extra, supported, outputs):
    """Opset 9 samples through Gather, which cannot read an empty tensor: a model with an op that
    can make one (NonZero) gets no underflow figures there."""
    nodes = [helper.make_node("Neg", ["x"], ["n"], name="neg")]
    if extra:
        nodes.append(helper.make_node(extra, ["x"], ["nz"], name="nz"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [2])], [helper.make_tensor_value_info("n", F, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    assert underflow_supported(model) == supported
    inst = instrument(model, float_tensors(model))
    assert len(inst.graph.output) == outputs * 2
    with OnnxRuntimeRunner(inst) as runner:
        runner.infer({"x": np.ones(2, np.float32)})


def test_constant_tensors_and_their_model_run_without_feeds():
    shape = numpy_helper.from_array(np.array([3, 4], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["w"], name="fill", value=numpy_helper.from_array(np.array([1e-6], np.float32))),
        helper.make_node("Transpose", ["w"], ["wt"], name="transpose"),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="matmul"),
        helper.make_node("Shape", ["x"], ["xs"], name="shape_of_x"),  # depends on the input
        helper.make_node("RandomNormal", [], ["noise"], name="noise", shape=[2]),  # not reproducible
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 4])], [helper.make_tensor_value_info("y", F, ["N", 3])], [shape]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert constant_tensors(model) == {"w", "wt"}
    tensors = [t for t in float_tensors(model) if t.name in constant_tensors(model)]
    cm = constant_model(model, tensors)
    assert not cm.graph.input and {n.name for n in cm.graph.node if not n.name.startswith("fp16guard")} == {"fill", "transpose"}
    with OnnxRuntimeRunner(cm) as runner:
        out = runner.infer({})
    for k, t in enumerate(tensors):
        assert float(out[output_names(k)[1]]) == pytest.approx(1e-6)
        _check_underflow(out, k, np.full((3, 4), 1e-6, np.float32))
    with pytest.raises(ValueError, match="depend on graph inputs"):
        constant_model(model, float_tensors(model))


def test_original_model_is_untouched_and_outputs_are_scalars_only():
    model = _mixed_model(18)
    before = model.SerializeToString()
    inst = instrument(model, float_tensors(model))
    assert model.SerializeToString() == before
    assert all(not o.type.tensor_type.shape.dim for o in inst.graph.output)
    assert all(o.name.startswith("fp16guard_stats/") for o in inst.graph.output)


def _nan_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["s"], name="sqrt"), helper.make_node("Relu", ["s"], ["r"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", F, [4])],
        [helper.make_tensor_value_info("r", F, [4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_flag_and_exact_count_detect_nan():
    model = _nan_model()
    tensors = float_tensors(model)
    x = np.array([4.0, -1.0, 9.0, -2.0], np.float32)  # sqrt of negatives: 2 NaN
    with OnnxRuntimeRunner(instrument(model, tensors)) as runner:
        flag = runner.infer({"x": x})[output_names(1)[2]]
    assert not np.isfinite(flag)
    with OnnxRuntimeRunner(instrument(model, tensors, exact_counts=True)) as runner:
        out = runner.infer({"x": x})
    assert int(out[output_names(0)[2]]) == 0
    assert int(out[output_names(1)[2]]) == 2


def test_ir3_model_with_initializers_as_inputs():
    w = numpy_helper.from_array(np.full((2, 2), 3.0, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", F, [2, 2]), helper.make_tensor_value_info("w", F, [2, 2])],
        [helper.make_tensor_value_info("y", F, [2, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    normalize_model(model)
    tensors = float_tensors(model)
    assert [t.name for t in tensors] == ["x", "y"]
    with OnnxRuntimeRunner(instrument(model, tensors)) as runner:
        out = runner.infer({"x": np.ones((2, 2), np.float32)})
    assert float(out[output_names(1)[1]]) == 4.0


def test_double_tensors_are_cast_for_reduction():
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE), helper.make_node("Neg", ["d"], ["n"], name="neg")],
        "g",
        [helper.make_tensor_value_info("x", F, [3])],
        [helper.make_tensor_value_info("n", TensorProto.DOUBLE, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    tensors = float_tensors(model)
    assert [t.name for t in tensors] == ["x", "d", "n"]
    with OnnxRuntimeRunner(instrument(model, tensors)) as runner:
        out = runner.infer({"x": np.array([1.0, -70000.0, 2.0], np.float32)})
    assert float(out[output_names(2)[1]]) == 70000.0
