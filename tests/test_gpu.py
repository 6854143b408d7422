"""The PyTorch ground-truth interpreter, and real FP16 on a GPU against FP16 storage emulation.

Three kinds of test, each skipping only for what it really needs (``-rs`` names it):

* **everywhere, CI included** (onnxruntime's CPU provider and the emulator, no torch): the
  emulator's side of every GPU comparison below (the verdicts real FP16 must match), FP16
  overflow and FP16 outputs on the CPU provider, and the interpreter's refusal of an op it
  does not know (checked before torch is imported);
* **PyTorch on its CPU** (torch is not an fp16guard dependency and CI does not install it: these
  skip naming it): the interpreter of ``benchmarks/harness/torch_fp16.py`` against onnxruntime;
* **PyTorch with a CUDA device** (marked ``gpu``): real FP16 kernels against the emulation.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.harness.torch_fp16 import TorchRunner, UnsupportedOpError  # torch is imported lazily there
from fp16guard import examples
from fp16guard.graph.emulate import emulate_fp16_storage
from fp16guard.io.shards import discover_shards
from fp16guard.runners.onnxrt import OnnxRuntimeRunner
from fp16guard.settings import VerifySettings

HAVE_TORCH = importlib.util.find_spec("torch") is not None

#: The interpreter's tests: torch on its CPU.
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed (not an fp16guard dependency; CI does not install it)")


def _why_no_torch_cuda() -> str | None:
    if not HAVE_TORCH:
        return "PyTorch is not installed (real FP16 kernels run through torch on CUDA)"
    import torch

    return None if torch.cuda.is_available() else "no CUDA device visible to torch"


def needs_torch_cuda(test):
    """Mark ``test`` ``gpu``; skip it, naming what is missing, without torch or a CUDA device."""
    reason = _why_no_torch_cuda()
    return pytest.mark.gpu(pytest.mark.skipif(reason is not None, reason=reason or "")(test))


NAMES = sorted(examples.EXAMPLES)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _ort(model, feeds):
    with OnnxRuntimeRunner(model) as r:
        return r.infer(feeds)


def _torch_cpu(model, feeds):
    with TorchRunner(model, device="cpu") as r:
        return r.infer(feeds)


@needs_torch
@pytest.mark.parametrize("name", NAMES)
def test_fp32_examples_match_onnxruntime_on_cpu(name):
    model = examples.build_model(name)
    feeds = examples.sample_inputs(name, 4, seed=9)
    ref, got = _ort(model, feeds), _torch_cpu(model, feeds)
    for key in ref:
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-4 * np.abs(ref[key]).max())


@needs_torch
def test_cnn_ops_match_onnxruntime():
    rng = np.random.default_rng(0)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
        numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "ln_s"),
        numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "ln_b"),
        i64("shape", [0, -1]), i64("split", [6, 10]), i64("s0", [2]), i64("s1", [10]), i64("ax", [1]),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),  # [n,4,4,4]
        helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
        helper.make_node("MaxPool", ["s"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),  # [n,4,2,2]
        helper.make_node("Reshape", ["p", "shape"], ["r"], name="reshape"),  # [n,16]
        helper.make_node("Split", ["r", "split"], ["a", "z"], name="split", axis=1),
        helper.make_node("Tanh", ["a"], ["ta"], name="tanh"),
        helper.make_node("Erf", ["z"], ["ez"], name="erf"),
        helper.make_node("Concat", ["ez", "ta"], ["cat"], name="concat", axis=1),  # [n,16]
        helper.make_node("Slice", ["cat", "s0", "s1", "ax"], ["sl"], name="slice"),  # [n,8]
        helper.make_node("LayerNormalization", ["sl", "ln_s", "ln_b"], ["y"], name="ln", axis=-1, epsilon=1e-5),
    ]
    model = _model(nodes, [_vi("x", ["n", 3, 4, 4])], [_vi("y", ["n", 8])], inits)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    ref, got = _ort(model, {"x": x}), _torch_cpu(model, {"x": x})
    np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-4, atol=1e-4)


@needs_torch
def test_fp16_node_overflows_in_torch():
    # Cast to FP16, multiply by 1000 in FP16: 100 * 1000 does not fit, 1 * 1000 does.
    k = numpy_helper.from_array(np.array(1000.0, np.float16), "k")
    model = _model(
        [helper.make_node("Cast", ["x"], ["xh"], name="to16", to=TensorProto.FLOAT16),
         helper.make_node("Mul", ["xh", "k"], ["yh"], name="mul"),
         helper.make_node("Cast", ["yh"], ["y"], name="to32", to=TensorProto.FLOAT)],
        [_vi("x", ["n", 2])], [_vi("y", ["n", 2])], [k],
    )
    got = _torch_cpu(model, {"x": np.array([[1.0, 100.0]], np.float32)})["y"]
    assert got[0, 0] == 1000.0 and np.isinf(got[0, 1])


@needs_torch
def test_declared_fp16_output_stays_fp16():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", ["n", 2], TensorProto.FLOAT16)], [_vi("y", ["n", 2], TensorProto.FLOAT16)])
    got = _torch_cpu(model, {"x": np.array([[-1.0, 70000.0]], np.float32)})["y"]
    assert got.dtype == np.float16 and got[0, 0] == 0 and np.isinf(got[0, 1])


def test_unsupported_op_is_named():
    model = _model([helper.make_node("Det", ["x"], ["y"], name="my_det")], [_vi("x", [2, 2])], [_vi("y", [])])
    with pytest.raises(UnsupportedOpError, match="my_det"):
        TorchRunner(model, device="cpu")


# --------------------------------------------------------------------------------------------
# the emulator's side of the GPU comparisons, and FP16 on the CPU provider: no torch, no GPU (CI)


def _fp16_mul_model():
    """Cast to FP16, multiply by 1000 in FP16: 100 * 1000 does not fit FP16, 1 * 1000 does."""
    k = numpy_helper.from_array(np.array(1000.0, np.float16), "k")
    return _model(
        [helper.make_node("Cast", ["x"], ["xh"], name="to16", to=TensorProto.FLOAT16),
         helper.make_node("Mul", ["xh", "k"], ["yh"], name="mul"),
         helper.make_node("Cast", ["yh"], ["y"], name="to32", to=TensorProto.FLOAT)],
        [_vi("x", ["n", 2])], [_vi("y", ["n", 2])], [k],
    )


def test_fp16_node_overflows_in_emulation():
    # What test_fp16_node_overflows_in_torch sees with real FP16 kernels, the emulator gives on the
    # CPU provider, exactly: 1000 is an FP16 value, 1e5 is past 65504.
    x = {"x": np.array([[1.0, 100.0]], np.float32)}
    got = _ort(emulate_fp16_storage(_fp16_mul_model()), x)["y"]
    assert got.dtype == np.float32 and got[0, 0] == 1000.0 and np.isposinf(got[0, 1])


def test_declared_fp16_output_stays_fp16_on_the_cpu_provider():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", ["n", 2], TensorProto.FLOAT16)], [_vi("y", ["n", 2], TensorProto.FLOAT16)])
    # onnxruntime's CPU provider runs a model declared FP16 on FP16 tensors: the outputs keep the
    # declared type, and an FP16 inf (what 70000 becomes) stays inf.
    got = _ort(model, {"x": np.array([[-1.0, np.inf], [2.5, 65504.0]], np.float16)})["y"]
    assert got.dtype == np.float16 and got.tolist() == [[0.0, np.inf], [2.5, 65504.0]]


def _example_builds(name, tmp_path):
    """An example model, its holdout shards, and its all-FP16 and planned builds (plan from CPU
    statistics of its calibration shards)."""
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.settings import PlanSettings
    from fp16guard.stats.collect import reduce_stats, shard_stats

    path = examples.save_model(name, tmp_path / "m.onnx")
    model = load_model(path)
    examples.write_shards(name, tmp_path / "calib", 2, 16, seed=1)
    examples.write_shards(name, tmp_path / "holdout", 2, 16, seed=2)
    calib = discover_shards([str(tmp_path / "calib")])
    holdout = discover_shards([str(tmp_path / "holdout")])
    plan = make_plan(model, reduce_stats([shard_stats(path, r) for r in calib]), PlanSettings())
    builds = {build: to_mixed_precision(model, set(nodes)) for build, nodes in (("all_fp16", set()), ("plan", plan.fp32_names))}
    return model, holdout, builds


@pytest.mark.parametrize("name", NAMES)
def test_emulation_verdicts_the_gpu_must_match(name, tmp_path):
    """The emulator's side of test_real_fp16_matches_emulation, on the CPU provider: every
    example's all-FP16 build fails and its planned build passes with finite outputs."""
    from fp16guard.verify.compare import verify

    model, holdout, builds = _example_builds(name, tmp_path)
    verdicts = {}
    for build, cand in builds.items():
        emu = verify(model, cand, holdout, VerifySettings(), emulate=True)
        assert emu["emulated"] is True and "emulat" in emu["execution"], emu["execution"]
        verdicts[build] = emu["passed"]
        if build == "plan":
            assert sum(o.get("nonfinite", 0) for o in emu["outputs"].values()) == 0
    assert verdicts == {"all_fp16": False, "plan": True}


@needs_torch_cuda
@pytest.mark.parametrize("name", NAMES)
def test_real_fp16_matches_emulation(name, tmp_path):
    """All-FP16 and planned builds: torch on CUDA and ORT-CPU emulation give the same verdict."""
    import torch

    from fp16guard.verify.compare import compare_runners, verify

    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model, holdout, builds = _example_builds(name, tmp_path)
    settings = VerifySettings()
    verdicts = {}
    for build, cand in builds.items():
        emu = verify(model, cand, holdout, settings, emulate=True)
        with OnnxRuntimeRunner(model) as ref_run, TorchRunner(cand, device="cuda") as t_run:
            real = compare_runners(model, ref_run, cand, t_run, holdout, settings)
        emu_nf = sum(o.get("nonfinite", 0) for o in emu["outputs"].values())
        real_nf = sum(o.get("nonfinite", 0) for o in real["outputs"].values())
        assert emu["passed"] == real["passed"], (build, emu["reason"], real["reason"])
        assert (emu_nf > 0) == (real_nf > 0), (build, emu_nf, real_nf)
        verdicts[build] = real["passed"]
    assert verdicts == {"all_fp16": False, "plan": True}


# --------------------------------------------------------------------------------------------
# ops of PyTorch exports (Mod, ArgMax/ArgMin, Einsum, TopK, CumSum, Resize): torch on CPU
# against onnxruntime on tiny models


def _vr(name, rank, t=TensorProto.FLOAT):
    """A value of known rank and unknown dims (the checker wants a shape on graph outputs)."""
    return helper.make_tensor_value_info(name, t, [f"{name}_{i}" for i in range(rank)])


def _einsum_rank(equation, shapes):
    eq = equation.replace(" ", "")
    return len(eq.split("->")[1]) if "->" in eq else sum(eq.count(c) == 1 for c in set(eq.replace(",", "")))


def _both(model, feeds):
    return _ort(model, feeds), _torch_cpu(model, feeds)


def _i64(name, v):
    return numpy_helper.from_array(np.array(v, np.int64), name)


@needs_torch
def test_scalar_constants_keep_rank_zero():
    # Shape arithmetic of exports: Gather with a scalar index gives a scalar, Unsqueeze makes it [1].
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Constant", [], ["one"], name="one", value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Gather", ["s", "one"], ["d"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["d", "ax0"], ["d1"], name="unsq"),
        helper.make_node("Concat", ["d1", "m1"], ["shape2"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "shape2"], ["y"], name="reshape"),
    ]
    model = _model(nodes, [_vi("x", [2, 3, 4])], [_vr("y", 2)], [_i64("ax0", [0]), _i64("m1", [-1])])
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ref, got = _both(model, {"x": x})
    assert got["y"].shape == ref["y"].shape == (3, 8)


@needs_torch
@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_signs_match_onnxruntime(fmod):
    model = _model([helper.make_node("Mod", ["a", "b"], ["y"], name="mod", fmod=fmod)],
                   [_vi("a", [6], TensorProto.INT64), _vi("b", [6], TensorProto.INT64)], [_vi("y", [6], TensorProto.INT64)])
    feeds = {"a": np.array([7, -7, 7, -7, 0, 9], np.int64), "b": np.array([3, 3, -3, -3, 5, 4], np.int64)}
    ref, got = _both(model, feeds)
    np.testing.assert_array_equal(got["y"], ref["y"])
    assert got["y"][1] == (2 if fmod == 0 else -1)


@needs_torch
def test_float_mod_uses_fmod():
    model = _model([helper.make_node("Mod", ["a", "b"], ["y"], name="mod", fmod=1)], [_vi("a", [3]), _vi("b", [3])], [_vi("y", [3])])
    feeds = {"a": np.array([5.5, -5.5, 1.0], np.float32), "b": np.array([2.0, 2.0, -0.75], np.float32)}
    ref, got = _both(model, feeds)
    np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-6)


@needs_torch
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("keepdims,last", [(0, 0), (1, 0), (0, 1)])
def test_argmax_argmin_with_ties(op, keepdims, last):
    model = _model([helper.make_node(op, ["x"], ["y"], name="arg", axis=1, keepdims=keepdims, select_last_index=last)],
                   [_vi("x", [3, 5])], [_vr("y", 2 if keepdims else 1, TensorProto.INT64)], opset=17)
    x = np.array([[1, 3, 3, 0, 3], [0, 0, 0, 0, 0], [-1, 2, -1, 2, 5]], np.float32)
    ref, got = _both(model, {"x": x})
    assert got["y"].dtype == np.int64
    np.testing.assert_array_equal(got["y"], ref["y"])


@needs_torch
@pytest.mark.parametrize("equation,shapes", [
    ("bnd,bmd->bnm", [(2, 3, 4), (2, 5, 4)]),
    ("ij,jk", [(3, 4), (4, 2)]),
    ("bhqd, bhkd -> bhqk", [(1, 2, 3, 4), (1, 2, 6, 4)]),
    ("ii->i", [(4, 4)]),
])
def test_einsum_matches_onnxruntime(equation, shapes):
    names = [f"x{i}" for i in range(len(shapes))]
    model = _model([helper.make_node("Einsum", names, ["y"], name="einsum", equation=equation)],
                   [_vi(n, list(s)) for n, s in zip(names, shapes)], [_vr("y", _einsum_rank(equation, shapes))])
    rng = np.random.default_rng(1)
    feeds = {n: rng.normal(size=s).astype(np.float32) for n, s in zip(names, shapes)}
    ref, got = _both(model, feeds)
    np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-5, atol=1e-5)


@needs_torch
@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("axis", [-1, 0])
def test_topk_values_and_tie_order(largest, axis):
    model = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=axis, largest=largest, sorted=1)],
                   [_vi("x", [4, 6])], [_vr("v", 2), _vr("i", 2, TensorProto.INT64)], [_i64("k", [3])])
    # Ties everywhere: ONNX wants the lower index first among equal values.
    x = np.array([[2, 2, 1, 2, 0, 2], [5, 5, 5, 5, 5, 5], [1, 0, 1, 0, 1, 0], [3, -1, 3, 7, 7, -1]], np.float32)
    ref, got = _both(model, {"x": x})
    np.testing.assert_array_equal(got["v"], ref["v"])
    np.testing.assert_array_equal(got["i"], ref["i"])
    assert got["i"].dtype == np.int64


@needs_torch
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.INT32])
def test_cumsum_modes_and_dtype(exclusive, reverse, elem):
    model = _model([helper.make_node("CumSum", ["x", "axis"], ["y"], name="cumsum", exclusive=exclusive, reverse=reverse)],
                   [_vi("x", [2, 5], elem)], [_vi("y", [2, 5], elem)],
                   [numpy_helper.from_array(np.array(-1, np.int32), "axis")])
    x = np.arange(10).reshape(2, 5).astype(np.float32 if elem == TensorProto.FLOAT else np.int32) - 3
    ref, got = _both(model, {"x": x})
    assert got["y"].dtype == ref["y"].dtype
    np.testing.assert_array_equal(got["y"], ref["y"])


@needs_torch
def test_fp16_cumsum_overflows_like_fp16_storage():
    model = _model([helper.make_node("CumSum", ["x", "axis"], ["y"], name="cumsum")],
                   [_vi("x", [1, 4], TensorProto.FLOAT16)], [_vi("y", [1, 4], TensorProto.FLOAT16)],
                   [numpy_helper.from_array(np.array(1, np.int64), "axis")])
    got = _torch_cpu(model, {"x": np.array([[30000, 30000, 30000, -30000]], np.float16)})["y"]
    assert got.dtype == np.float16 and got[0, 1] == 60000 and np.isinf(got[0, 2])


_RESIZE_CASES = [
    # (mode, coordinate_transformation_mode, nearest_mode, scales or None, sizes or None)
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2], None),  # what torch exports for interpolate(nearest)
    ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 1.5, 2.5], None),
    ("nearest", "asymmetric", "round_prefer_floor", [1, 1, 2, 2], None),  # source coords x.5: ties
    ("nearest", "asymmetric", "round_prefer_ceil", [1, 1, 2, 2], None),
    ("nearest", "half_pixel", "round_prefer_ceil", [1, 1, 0.5, 3], None),
    ("nearest", "align_corners", "ceil", None, [1, 2, 7, 3]),
    ("nearest", "tf_half_pixel_for_nn", "round_prefer_floor", [1, 1, 2, 1.75], None),
    ("linear", "half_pixel", None, [1, 1, 2, 2], None),
    ("linear", "pytorch_half_pixel", None, None, [1, 2, 9, 1]),
    ("linear", "align_corners", None, [1, 1, 1.5, 3], None),
    ("linear", "asymmetric", None, [1, 1, 0.5, 2], None),
]


@needs_torch
@pytest.mark.parametrize("mode,coord,nearest,scales,sizes", _RESIZE_CASES)
def test_resize_matches_onnxruntime(mode, coord, nearest, scales, sizes):
    attrs = {"mode": mode, "coordinate_transformation_mode": coord}
    if nearest:
        attrs["nearest_mode"] = nearest
    inits = [numpy_helper.from_array(np.array(scales or [], np.float32), "scales")]
    inputs = ["x", "", "scales"]
    if sizes:
        inits.append(_i64("sizes", sizes))
        inputs = ["x", "", "", "sizes"]
    model = _model([helper.make_node("Resize", inputs, ["y"], name="resize", **attrs)], [_vi("x", [1, 2, 4, 5])], [_vr("y", 4)], inits[1:] if sizes else inits)
    x = np.random.default_rng(3).normal(size=(1, 2, 4, 5)).astype(np.float32)
    ref, got = _both(model, {"x": x})
    assert got["y"].shape == ref["y"].shape
    np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-5, atol=1e-6)


@needs_torch
def test_fp16_resize_linear_stays_fp16():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="linear")],
                   [_vi("x", [1, 1, 2, 2], TensorProto.FLOAT16)], [_vi("y", [1, 1, 4, 4], TensorProto.FLOAT16)], [scales])
    x = np.array([[[[0, 60000], [-60000, 65504]]]], np.float16)
    got = _torch_cpu(model, {"x": x})["y"]
    ref = _ort(model, {"x": x})["y"]
    assert got.dtype == np.float16 and np.isfinite(got).all()
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=1e-3)


@needs_torch
@pytest.mark.parametrize("attrs,match", [
    ({"mode": "cubic"}, "mode='cubic'"),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, "tf_crop_and_resize"),
])
def test_unsupported_resize_is_named(attrs, match):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    model = _model([helper.make_node("Resize", ["x", "", "scales"], ["y"], name="my_resize", **attrs)], [_vi("x", [1, 1, 2, 2])], [_vr("y", 4)], [scales])
    with TorchRunner(model, device="cpu") as r, pytest.raises(UnsupportedOpError, match=rf"{match}.*my_resize"):
        r.infer({"x": np.zeros((1, 1, 2, 2), np.float32)})


def _export_style_model():
    """A small graph with every op added for PyTorch exports, and an FP16 overflow in it."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array((rng.normal(size=(4, 8)) * 300).astype(np.float32), "w"),  # |h| ~ 1e3-1e4
        numpy_helper.from_array(np.array([1, 1, 2], np.float32), "scales"),
        numpy_helper.from_array(np.array(-1, np.int64), "axis"),
        _i64("k", [2]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),  # [n,3,8]
        helper.make_node("Einsum", ["h", "h"], ["att"], name="logits", equation="bnd,bmd->bnm"),  # ~1e6-1e8: FP16 inf
        helper.make_node("Resize", ["att", "", "scales"], ["up"], name="up", mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("CumSum", ["up", "axis"], ["cs"], name="cumsum"),
        helper.make_node("ReduceMean", ["cs"], ["m"], name="mean", axes=[1], keepdims=0),  # [n,6]
        helper.make_node("TopK", ["m", "k"], ["topv", "topi"], name="topk", axis=-1),
        helper.make_node("ArgMax", ["m"], ["am"], name="argmax", axis=-1, keepdims=0),
    ]
    return _model(nodes, [_vi("x", ["n", 3, 4])], [_vr("topv", 2), _vr("topi", 2, TensorProto.INT64), _vr("am", 1, TensorProto.INT64)], inits)


@needs_torch
def test_export_style_model_fp32_matches_and_fp16_overflows_on_cpu():
    from fp16guard.graph.convert import to_mixed_precision

    model = _export_style_model()
    x = np.random.default_rng(6).normal(size=(2, 3, 4)).astype(np.float32)
    ref, got = _both(model, {"x": x})
    np.testing.assert_allclose(got["topv"], ref["topv"], rtol=1e-5)
    np.testing.assert_array_equal(got["topi"], ref["topi"])
    np.testing.assert_array_equal(got["am"], ref["am"])
    half = _torch_cpu(to_mixed_precision(model, set()), {"x": x})
    assert not np.isfinite(half["topv"]).all()


def _export_style_holdout(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(2):
        np.savez(tmp_path / f"s{i}.npz", x=rng.normal(size=(4, 3, 4)).astype(np.float32))
    return discover_shards([str(tmp_path)], role="holdout")


#: (FP32 nodes, verdict): all-FP16 overflows in the Einsum; everything FP32 passes.
_EXPORT_STYLE_BUILDS = ((set(), False), ({"proj", "logits", "up", "cumsum", "mean", "topk", "argmax"}, True))


def test_export_style_ops_emulation_verdicts(tmp_path):
    """The emulator's side of test_export_style_ops_real_fp16_matches_emulation (CPU provider)."""
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.verify.compare import verify

    model = _export_style_model()
    holdout = _export_style_holdout(tmp_path)
    for nodes, expect in _EXPORT_STYLE_BUILDS:
        emu = verify(model, to_mixed_precision(model, nodes), holdout, VerifySettings(), emulate=True)
        # The all-FP32 build has no FP16 node, so it runs as it is (nothing to emulate).
        assert emu["emulated"] is (not expect) and emu["passed"] is expect, (sorted(nodes), emu["reason"])
        assert (emu["outputs"]["topv"].get("nonfinite", 0) > 0) is not expect


@needs_torch_cuda
def test_export_style_ops_real_fp16_matches_emulation(tmp_path):
    """The new ops in real FP16 on CUDA and through ORT-CPU emulation: same verdicts, plan passes."""
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.verify.compare import compare_runners, verify

    model = _export_style_model()
    holdout = _export_style_holdout(tmp_path)
    settings = VerifySettings()
    for nodes, expect in _EXPORT_STYLE_BUILDS:
        cand = to_mixed_precision(model, nodes)
        emu = verify(model, cand, holdout, settings, emulate=True)
        with OnnxRuntimeRunner(model) as ref_run, TorchRunner(cand, device="cuda") as t_run:
            real = compare_runners(model, ref_run, cand, t_run, holdout, settings)
        assert emu["passed"] == real["passed"] == expect, (emu["reason"], real["reason"])
