"""The PyTorch ground-truth interpreter, and real FP16 on a GPU against FP16 storage emulation.

torch is not an fp16guard dependency: everything here skips without it. The interpreter tests
run on torch's CPU; the comparison with real FP16 kernels is marked ``gpu`` and skips without CUDA.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard import examples
from fp16guard.data import discover_shards
from fp16guard.runners.onnxrt import OnnxRuntimeRunner
from fp16guard.settings import VerifySettings

torch = pytest.importorskip("torch", reason="PyTorch is not installed (not an fp16guard dependency)")

from fp16guard.torch_fp16 import TorchRunner, UnsupportedOpError  # noqa: E402

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


@pytest.mark.parametrize("name", NAMES)
def test_fp32_examples_match_onnxruntime_on_cpu(name):
    model = examples.build_model(name)
    feeds = examples.sample_inputs(name, 4, seed=9)
    ref, got = _ort(model, feeds), _torch_cpu(model, feeds)
    for key in ref:
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-4 * np.abs(ref[key]).max())


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


def test_declared_fp16_output_stays_fp16():
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_vi("x", ["n", 2], TensorProto.FLOAT16)], [_vi("y", ["n", 2], TensorProto.FLOAT16)])
    got = _torch_cpu(model, {"x": np.array([[-1.0, 70000.0]], np.float32)})["y"]
    assert got.dtype == np.float16 and got[0, 0] == 0 and np.isinf(got[0, 1])


def test_unsupported_op_is_named():
    model = _model([helper.make_node("Det", ["x"], ["y"], name="my_det")], [_vi("x", [2, 2])], [_vi("y", [])])
    with pytest.raises(UnsupportedOpError, match="my_det"):
        TorchRunner(model, device="cpu")


def _gpu_available() -> bool:
    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="no CUDA device visible to torch")
@pytest.mark.parametrize("name", NAMES)
def test_real_fp16_matches_emulation(name, tmp_path):
    """All-FP16 and planned builds: torch on CUDA and ORT-CPU emulation give the same verdict."""
    from fp16guard.convert import to_mixed_precision
    from fp16guard.model_io import load_model
    from fp16guard.plan import make_plan
    from fp16guard.settings import PlanSettings
    from fp16guard.stats import reduce_stats, shard_stats
    from fp16guard.verify import compare_runners, verify

    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_tf32 = False
    path = examples.save_model(name, tmp_path / "m.onnx")
    model = load_model(path)
    examples.write_shards(name, tmp_path / "calib", 2, 16, seed=1)
    examples.write_shards(name, tmp_path / "holdout", 2, 16, seed=2)
    calib = discover_shards([str(tmp_path / "calib")])
    holdout = discover_shards([str(tmp_path / "holdout")])
    plan = make_plan(model, reduce_stats([shard_stats(path, r) for r in calib]), PlanSettings())
    settings = VerifySettings()
    verdicts = {}
    for build, nodes in (("all_fp16", set()), ("plan", plan.fp32_names)):
        cand = to_mixed_precision(model, nodes)
        emu = verify(model, cand, holdout, settings, emulate=True)
        with OnnxRuntimeRunner(model) as ref_run, TorchRunner(cand, device="cuda") as t_run:
            real = compare_runners(model, ref_run, cand, t_run, holdout, settings)
        emu_nf = sum(o.get("nonfinite", 0) for o in emu["outputs"].values())
        real_nf = sum(o.get("nonfinite", 0) for o in real["outputs"].values())
        assert emu["passed"] == real["passed"], (build, emu["reason"], real["reason"])
        assert (emu_nf > 0) == (real_nf > 0), (build, emu_nf, real_nf)
        verdicts[build] = real["passed"]
    assert verdicts == {"all_fp16": False, "plan": True}
