"""The backend registry and the onnxruntime backends on the CPU (real onnxruntime, tiny models)."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from fp16guard import examples
from fp16guard.backends.base import Backend
from fp16guard.backends.onnxruntime import OnnxRuntimeCPU, OnnxRuntimeGPU, fp16_cpu_fallback, make_backend
from fp16guard.backends.profile import CPU_NOTE, default_batches, profile_artifact, speed_summary
from fp16guard.backends.registry import backend_names, get_backend, register, released_artifact
from fp16guard.errors import ConfigError
from fp16guard.graph.convert import to_mixed_precision
from fp16guard.io.model import input_specs, load_model, save_model
from fp16guard.io.shards import discover_shards
from fp16guard.runners.base import Runner
from fp16guard.runners.onnxrt import CPU, CUDA, OnnxRuntimeRunner, choose_providers, cuda_usable
from fp16guard.settings import RunParameters, VerifySettings


def _params(**extra):
    return dict(model="m.onnx", calib=["c"], holdout=["h"], name="n", version="v", **extra)


def test_registry_names_and_unknown_backend():
    assert backend_names()[:2] == ("onnxruntime", "tensorrt")
    with pytest.raises(ConfigError, match="backend 'nope' is not known; expected one of onnxruntime, tensorrt"):
        get_backend("nope")
    with pytest.raises(ValueError):
        RunParameters(**_params(backend="nope"))


def test_every_builtin_backend_follows_the_protocol():
    for name in backend_names():
        backend = get_backend(name, [CPU])
        assert isinstance(backend, Backend), name
        assert backend.name == name and backend.artifact


def test_register_adds_a_backend_in_one_place():
    class Echo(OnnxRuntimeCPU):
        name = "echo-test"

    register("echo-test", lambda providers: Echo([CPU]), "test backend")
    try:
        assert "echo-test" in backend_names()
        assert get_backend("echo-test").name == "echo-test"
    finally:
        from fp16guard.backends import registry

        registry._REGISTERED.pop("echo-test")


@pytest.mark.skipif(cuda_usable(), reason="this machine has a usable CUDA provider: auto picks it")
def test_auto_is_cpu_without_a_gpu():
    assert choose_providers(None) == choose_providers(["auto"]) == [CPU]
    backend = make_backend(None)
    assert isinstance(backend, OnnxRuntimeCPU) and backend.implementation == "onnxruntime-cpu" and not backend.real_fp16


def test_explicit_providers_decide_the_implementation():
    assert choose_providers([CUDA]) == [CUDA, CPU]
    assert isinstance(make_backend([CPU]), OnnxRuntimeCPU)
    if cuda_usable():
        assert isinstance(make_backend([CUDA]), OnnxRuntimeGPU)


@pytest.mark.skipif(cuda_usable(), reason="this machine has a usable CUDA provider")
def test_unusable_cuda_request_is_the_cpu_backend_said_once(capsys):
    # Issue 19 item 5: CUDA asked for on a CPU-only host runs onnxruntime-cpu (emulation); the
    # record names what ran and what was asked; the fallback is said once per process.
    from fp16guard.runners import onnxrt

    onnxrt._WARNED.clear()
    backend = make_backend([CUDA])
    again = make_backend([CUDA])
    assert isinstance(backend, OnnxRuntimeCPU) and isinstance(again, OnnxRuntimeCPU)
    assert backend.implementation == "onnxruntime-cpu" and not backend.real_fp16
    assert backend.providers == [CPU] and backend.requested == [CUDA, CPU]
    with OnnxRuntimeRunner(examples.build_model("mlp"), providers=[CUDA]) as runner:
        assert runner.providers[0] == CPU
    with OnnxRuntimeRunner(examples.build_model("mlp"), providers=[CUDA]):
        pass
    err = capsys.readouterr().err
    assert err.count("CUDAExecutionProvider was requested but is not usable here") == 1, err
    assert err.count("not available in this onnxruntime") <= 1, err


def test_released_artifact_reads_old_and_new_records():
    assert released_artifact({"name": "onnxruntime", "artifact": "model.mixed.onnx"}) == "model.mixed.onnx"
    assert released_artifact({"name": "tensorrt", "tensorrt_version": "10.12"}) == "model.engine"
    assert released_artifact(None) == "model.mixed.onnx"
    assert released_artifact({"name": "x", "artifact": "model.other"}) == "model.other"


def test_runners_follow_the_runner_protocol():
    from fp16guard.runners.tensorrt import TensorRTRunner

    members = ("activate", "infer", "close", "__enter__", "__exit__", "input_names", "output_names")
    for obj in (OnnxRuntimeRunner, TensorRTRunner("x.engine")):  # ORT's names are properties of a session
        assert all(hasattr(obj, m) for m in members), obj
    with OnnxRuntimeRunner(examples.build_model("mlp")) as runner:
        assert isinstance(runner, Runner)


def test_node_placement_and_fallback_detection_on_a_cpu_session():
    model = examples.build_model("mlp")
    cand = to_mixed_precision(model, set())
    with OnnxRuntimeRunner(cand, record_placement=True) as runner:
        with pytest.raises(RuntimeError, match="run infer"):
            runner.node_placement()
    with OnnxRuntimeRunner(cand, record_placement=True) as runner:
        runner.infer(examples.sample_inputs("mlp", 2))
        placement = runner.node_placement()
        again = runner.infer(examples.sample_inputs("mlp", 2))  # profiler stopped; still runs
    assert again and placement and all(p["provider"] == CPU for p in placement.values())
    found = fp16_cpu_fallback(cand, placement)
    # Every FP16 compute node ran on the CPU here; casts never count.
    assert found and all(f["op_type"] != "Cast" for f in found)
    assert fp16_cpu_fallback(model, {n.name: {"provider": CPU, "op_type": n.op_type} for n in model.graph.node}) == []
    with OnnxRuntimeRunner(cand) as runner:
        with pytest.raises(RuntimeError, match="record_placement"):
            runner.node_placement()


def test_cpu_backend_verifies_through_emulation(tmp_path):
    path = examples.save_model("rmsnorm", tmp_path / "m.onnx")
    examples.write_shards("rmsnorm", tmp_path / "h", 1, 8, seed=2)
    holdout = discover_shards([str(tmp_path / "h")], "holdout")
    artifact = save_model(to_mixed_precision(load_model(path), set()), tmp_path / "a.onnx")
    report = get_backend("onnxruntime", [CPU]).verify(path, artifact, holdout, VerifySettings())
    assert report["emulated"] is True and report["cpu_fallback_nodes"] == []
    assert not report["passed"]  # all-FP16 RMSNorm: Pow(h, 2) overflows


def test_default_batches():
    specs = input_specs(examples.build_model("mlp"))
    assert default_batches(specs, 16) == [16, 32]
    assert default_batches(specs, 32) == [32]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])
    static = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    assert default_batches(input_specs(static), 16) == [4]


def test_profile_on_cpu_is_not_timed_by_default_and_says_why(tmp_path):
    path = examples.save_model("mlp", tmp_path / "m.onnx")
    artifact = save_model(to_mixed_precision(load_model(path), set()), tmp_path / "a.onnx")
    feeds = examples.sample_inputs("mlp", 4)
    record = get_backend("onnxruntime", [CPU]).profile(path, artifact, feeds, [4])
    assert record["measured"] is False and record["note"] == CPU_NOTE and record["batches"] == []
    assert speed_summary(record) == CPU_NOTE
    timed = profile_artifact(path, artifact, feeds, [3, 8], [CPU], warmup=0, iterations=2, time_on_cpu=True)
    assert timed["measured"] and [r["batch"] for r in timed["batches"]] == [3, 8]
    assert all(r["fp32_ms"] > 0 and r["artifact_ms"] > 0 and r["all_fp16_ms"] > 0 for r in timed["batches"])
    assert "not FP16's" in timed["note"] and speed_summary(timed).endswith("CPU latency, not FP16's")


def test_speed_summary_wording():
    record = {"measured": True, "fp16_kernels": True, "device": "GPU", "batches": [
        {"batch": 32, "speedup": 1.32, "gain_kept": 0.87},
        {"batch": 1, "speedup": 0.98, "gain_kept": None},
    ]}
    line = speed_summary(record)
    assert line.startswith("batch 32: 1.32x faster than FP32; keeps 87% of the FP16 gain | batch 1: 1.02x slower than FP32; FP16 itself is not faster here")
    assert speed_summary(None) is None


def test_run_parameters_profile_batches():
    assert RunParameters(**_params()).profile_batches is None
    assert RunParameters(**_params(profile_batches=[])).profile_batches == []
    with pytest.raises(ValueError, match="profile_batches"):
        RunParameters(**_params(profile_batches=[0]))


def test_no_backend_name_is_compared_outside_the_registry():
    """Issue 11: backend names are compared only in fp16guard/backends/ (AST scan of the code)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    names = set(backend_names()) | {"onnxruntime-cpu", "onnxruntime-gpu"}
    offenders = []
    for folder in ("fp16guard", "tasks", "flows"):
        for path in (root / folder).rglob("*.py"):
            if "backends" in path.relative_to(root).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Compare):
                    for side in [node.left, *node.comparators]:
                        if isinstance(side, ast.Constant) and side.value in names:
                            offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
