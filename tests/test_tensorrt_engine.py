"""Real TensorRT: build, check and run engines from tiny models (skip without TensorRT and a GPU).

The tests marked ``tensorrt`` need the ``tensorrt`` package and an NVIDIA GPU; they skip with the
reason otherwise. The first two tests run everywhere: the clear error when TensorRT is absent,
and (marked ``gpu``) the GPU name read from the CUDA driver for the timing-cache key.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fp16guard.backends.tensorrt import TensorRTUnavailable, build_engine
from fp16guard.backends.tensorrt.build import ENGINE_NAME, INSPECT_NAME
from fp16guard.backends.tensorrt.choose import choose_mode, parse_version
from fp16guard.backends.tensorrt.env import gpu_name, require_tensorrt
from fp16guard.backends.tensorrt.errors import UNAVAILABLE_HINT
from fp16guard.errors import UserError
from fp16guard.io.hashing import sha256_file

from tensorrt_models import PLAN_NODES, plan_dict, tiny_model


def _tensorrt_or_skip():
    try:
        trt = require_tensorrt()
        gpu = gpu_name()
    except TensorRTUnavailable as exc:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {exc.detail}")
    return trt, gpu


def _tensorrt_absent() -> bool:
    try:
        require_tensorrt()
        gpu_name()
    except TensorRTUnavailable:
        return True
    return False


def test_clear_user_error_without_tensorrt_or_gpu(tmp_path):
    if not _tensorrt_absent():
        pytest.skip("TensorRT and a GPU are present: the error path cannot happen here")
    onnx.save(tiny_model(), str(tmp_path / "m.onnx"))
    with pytest.raises(TensorRTUnavailable) as info:
        build_engine(tmp_path / "m.onnx", None, plan_dict(), tmp_path / "out", [{"x": (2, 8)}])
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    assert str(info.value).startswith(UNAVAILABLE_HINT)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
def test_gpu_name_from_the_driver():
    try:
        name = gpu_name()
    except TensorRTUnavailable as exc:
        pytest.skip(f"no NVIDIA GPU here: {exc.detail}")
    assert name and name.isprintable()
    assert "NVIDIA" in name.upper() or len(name) > 3


def _write(tmp_path, mixed=False, scale_w2=1.0):
    model = tiny_model(mixed)
    if scale_w2 != 1.0:
        w2 = next(t for t in model.graph.initializer if t.name == "W2")
        arr = onnx.numpy_helper.to_array(w2) * scale_w2
        w2.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), "W2"))
    path = tmp_path / ("model.mixed.onnx" if mixed else "model.onnx")
    onnx.save(model, str(path))
    return path


def _ort(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]


SHAPES = [{"x": (4, 8)}, {"x": (4, 8)}, {"x": (1, 8)}, {"x": (6, 8)}]


@pytest.mark.tensorrt
def test_weak_build_pins_every_layer_and_runs(tmp_path):
    trt, gpu = _tensorrt_or_skip()
    if parse_version(trt.__version__) >= (11, 0, 0):
        pytest.skip(f"TensorRT {trt.__version__} has no weak typing")
    from fp16guard.runners.tensorrt import TensorRTRunner

    fp32 = _write(tmp_path)
    record = build_engine(fp32, None, plan_dict(), tmp_path / "out", SHAPES, mode="weak", timing_cache_dir=tmp_path / "cache")
    assert record["typing"]["mode"] == "weak" and record["gpu"] == gpu
    assert record["tensorrt_version"] == trt.__version__
    assert record["profile"]["x"] == {"min": [1, 8], "opt": [4, 8], "max": [6, 8]}
    assert set(record["pinning"]["pinned"]) == set(PLAN_NODES), record["pinning"]
    assert record["precision_check"]["passed"]
    engine = tmp_path / "out" / ENGINE_NAME
    assert record["files"]["engine"]["sha256"] == sha256_file(engine)
    assert (tmp_path / "out" / INSPECT_NAME).is_file()
    assert record["timing_cache"]["saved_bytes"] > 0

    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    with TensorRTRunner(engine) as runner:
        assert runner.output_names == ["y"]
        got = runner.infer({"x": x})["y"]
    np.testing.assert_allclose(got, _ort(fp32, {"x": x}), rtol=2e-2, atol=2e-3)

    again = build_engine(fp32, None, plan_dict(), tmp_path / "out2", SHAPES, mode="weak", timing_cache_dir=tmp_path / "cache")
    assert again["timing_cache"]["loaded_bytes"] > 0 and again["timing_cache"]["accepted"] is True


@pytest.mark.tensorrt
def test_strong_build_from_mixed_model(tmp_path):
    trt, _ = _tensorrt_or_skip()
    if parse_version(trt.__version__)[:2] < (10, 12):
        pytest.skip(f"TensorRT {trt.__version__} predates strongly typed builds on request (10.12)")
    from fp16guard.runners.tensorrt import run_holdout
    from fp16guard.io.shards import discover_shards
    from fp16guard.io.model import input_specs

    fp32 = _write(tmp_path)
    mixed = _write(tmp_path, mixed=True)
    record = build_engine(fp32, mixed, plan_dict(), tmp_path / "out", SHAPES, mode="strong")
    assert record["typing"]["mode"] == "strong"
    assert record["source_model"]["sha256"] == sha256_file(mixed)
    assert record["precision_check"]["passed"], record["precision_check"]
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    np.savez(tmp_path / "hold.npz", x=x)
    refs = discover_shards([str(tmp_path / "hold.npz")], "holdout")
    [(ref, outputs)] = list(run_holdout(tmp_path / "out" / ENGINE_NAME, refs, input_specs(tiny_model(True)), batch_size=4))
    assert outputs["y"].shape == (5, 3)
    np.testing.assert_allclose(outputs["y"], _ort(mixed, {"x": x}), rtol=2e-2, atol=2e-3)


@pytest.mark.tensorrt
def test_overflow_stays_finite_when_plan_nodes_run_in_fp32(tmp_path):
    """/fc2/MatMul produces values near 1e5 (FP16 overflows); pinned to FP32, softmax stays finite."""
    trt, _ = _tensorrt_or_skip()
    from fp16guard.runners.tensorrt import TensorRTRunner

    fp32 = _write(tmp_path, scale_w2=3e4)
    mixed = _write(tmp_path, mixed=True, scale_w2=3e4)
    x = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    ref = _ort(fp32, {"x": x})
    record = build_engine(fp32, mixed, plan_dict(), tmp_path / "out", SHAPES, mode="auto")
    assert record["typing"] == choose_mode(trt.__version__, "auto").to_dict()
    with TensorRTRunner(tmp_path / "out" / ENGINE_NAME) as runner:
        got = runner.infer({"x": x})["y"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-3)


@pytest.mark.tensorrt
def test_full_pipeline_on_an_example_passes_verification(tmp_path):
    """examples.mlp -> stats -> plan -> mixed model -> engine -> verification against FP32."""
    _tensorrt_or_skip()
    from fp16guard import examples
    from fp16guard.backends.tensorrt.profiles import observed_shapes
    from fp16guard.runners.tensorrt import TensorRTRunner
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.shards import discover_shards
    from fp16guard.io.model import input_specs, load_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner
    from fp16guard.settings import PlanSettings, VerifySettings
    from fp16guard.stats.collect import reduce_stats, shard_stats
    from fp16guard.verify.compare import compare_runners

    model_path = examples.save_model("mlp", tmp_path / "model.onnx")
    examples.write_shards("mlp", tmp_path / "calib", 2, 4, seed=0)
    examples.write_shards("mlp", tmp_path / "hold", 1, 4, seed=1)
    calib = discover_shards([str(tmp_path / "calib")])
    hold = discover_shards([str(tmp_path / "hold")], "holdout")
    model = load_model(model_path)
    stats = reduce_stats([shard_stats(model_path, ref) for ref in calib])
    plan = make_plan(model, stats, PlanSettings())
    assert plan.fp32_nodes, "the mlp example overflows: the plan must keep some nodes in FP32"
    mixed_path = tmp_path / "model.mixed.onnx"
    onnx.save(to_mixed_precision(model, plan.fp32_names), str(mixed_path))
    shapes = observed_shapes(calib + hold, input_specs(model))
    build_engine(model_path, mixed_path, plan.to_dict(), tmp_path / "out", shapes)
    with OnnxRuntimeRunner(str(model_path)) as ref_run, TensorRTRunner(tmp_path / "out" / ENGINE_NAME) as cand:
        report = compare_runners(model, ref_run, model, cand, hold, VerifySettings())
    assert report["passed"], report
