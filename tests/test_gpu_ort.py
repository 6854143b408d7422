"""onnxruntime-gpu on a real GPU: CUDA statistics, real FP16 verdicts, CPU-fallback detection,
profile. The CUDA tests are marked ``gpu`` and skip, naming what is missing (onnxruntime-gpu, or a
usable CUDA device), on machines without them (CI, the CPU development machines); the rest run
everywhere. Run on the lent H200 with onnxruntime-gpu (docs/GPU.md)::

    python3 -m pytest -q -m gpu tests/test_gpu_ort.py
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard import examples
from fp16guard.backends.onnxruntime import OnnxRuntimeGPU, fp16_cpu_fallback, make_backend, verify_on_cuda
from fp16guard.errors import ModelError
from fp16guard.io.shards import discover_shards
from fp16guard.runners.onnxrt import CPU, CUDA, OnnxRuntimeRunner, choose_providers, cuda_usable
from fp16guard.settings import VerifySettings



def _why_no_cuda() -> str | None:
    """Why the CUDA tests cannot run here, naming what is missing; None when they can."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return "onnxruntime-gpu is not installed (this onnxruntime has no CUDAExecutionProvider)"
    if not cuda_usable():
        return "no usable CUDA device: onnxruntime-gpu's CUDAExecutionProvider does not load on this machine (no NVIDIA GPU or driver)"
    return None


def needs_cuda(test):
    """Mark ``test`` ``gpu`` and skip it, for the named reason, where CUDA cannot run."""
    reason = _why_no_cuda()
    return pytest.mark.gpu(pytest.mark.skipif(reason is not None, reason=reason or "")(test))

#: onnxruntime's words for an op it cannot run in FP16: no kernel (``NOT_IMPLEMENTED``, on any
#: provider) or an op schema that does not admit FP16 (``INVALID_GRAPH`` type error, e.g. Celu).
#: Such a candidate cannot be tried; any other failure is a bug and fails the test.
_NO_FP16 = re.compile(r": NOT_IMPLEMENTED :|Type Error: Type 'tensor\(float16\)'")


def _cannot_run_in_fp16(exc: Exception) -> bool:
    return isinstance(exc, ModelError) and bool(_NO_FP16.search(str(exc)))

NAMES = sorted(examples.EXAMPLES)
GPU = [CUDA, CPU]


def _setup(name, tmp_path, calib_samples=16, holdout_samples=16):
    path = examples.save_model(name, tmp_path / "m.onnx")
    examples.write_shards(name, tmp_path / "calib", 2, calib_samples, seed=1)
    examples.write_shards(name, tmp_path / "holdout", 2, holdout_samples, seed=2)
    return path, discover_shards([str(tmp_path / "calib")]), discover_shards([str(tmp_path / "holdout")], "holdout")


@needs_cuda
def test_auto_chooses_cuda():
    assert choose_providers(None) == GPU
    backend = make_backend(None)
    assert isinstance(backend, OnnxRuntimeGPU) and backend.real_fp16 and backend.implementation == "onnxruntime-gpu"


@needs_cuda
@pytest.mark.parametrize("name", NAMES)
def test_cuda_statistics_match_cpu(name, tmp_path):
    """TF32 off: every tensor's max |x| on CUDA within 1e-4 (relative) of the CPU's."""
    from fp16guard.stats.collect import shard_stats

    path, calib, _ = _setup(name, tmp_path)
    for ref in calib:
        cpu = shard_stats(path, ref, providers=[CPU]).to_pydict()
        gpu = shard_stats(path, ref, providers=GPU).to_pydict()
        assert cpu["tensor"] == gpu["tensor"]
        a, b = np.array(cpu["max_abs"]), np.array(gpu["max_abs"])
        rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-6 * np.abs(a).max())
        print(f"{name} {ref.name}: {len(a)} tensors, max relative difference CUDA vs CPU {rel.max():.3g}")
        assert rel.max() < 1e-4, (name, cpu["tensor"][int(rel.argmax())], a[rel.argmax()], b[rel.argmax()])


@needs_cuda
def test_tf32_is_off_in_every_session():
    """A 1024-deep FP32 MatMul: TF32 off matches NumPy's float64 to ~1e-6; TF32 on is ~1e-3 off."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx 1.23 writes IR 14 by default; onnxruntime 1.31 reads up to 13
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64)
    errors = {}
    for label, options in (("off", None), ("on", {"use_tf32": "1"})):
        with OnnxRuntimeRunner(model, providers=GPU, cuda_options=options) as runner:
            assert runner.providers[0] == CUDA
            errors[label] = float(np.abs(runner.infer({"x": x})["y"] - exact).max() / np.abs(exact).max())
    print(f"relative error vs float64: TF32 off {errors['off']:.3g}, TF32 on {errors['on']:.3g}")
    assert errors["off"] < 1e-5
    assert errors["on"] > 10 * errors["off"]


@needs_cuda
@pytest.mark.parametrize("name", NAMES)
def test_real_fp16_verdicts_match_emulation(name, tmp_path):
    """All-FP16 and planned builds: the CUDA backend (real FP16 kernels, onnxruntime's own graph
    optimisations) against CPU emulation. The plan passes on both; emulation is never more
    permissive; where real FP16 passes what emulation rejects, the same candidate with graph
    optimisations off fails like emulation (a fused kernel computed the overflowing part in FP32)."""
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model, save_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.settings import PlanSettings
    from fp16guard.stats.collect import reduce_stats, shard_stats
    from fp16guard.verify.compare import compare_runners, verify

    path, calib, holdout = _setup(name, tmp_path)
    model = load_model(path)
    plan = make_plan(model, reduce_stats([shard_stats(path, r, providers=GPU) for r in calib]), PlanSettings())
    settings = VerifySettings()
    for build, nodes in (("all_fp16", set()), ("plan", plan.fp32_names)):
        cand = to_mixed_precision(model, set(nodes))
        artifact = save_model(cand, tmp_path / f"{build}.onnx")
        emu = verify(path, artifact, holdout, settings, providers=[CPU], emulate=True)
        real = OnnxRuntimeGPU(GPU).verify(path, artifact, holdout, settings)
        with OnnxRuntimeRunner(model, providers=GPU) as ref_run, OnnxRuntimeRunner(cand, providers=GPU, optimization="disable") as raw_run:
            unfused = compare_runners(model, ref_run, cand, raw_run, holdout, settings)
        print(f"{name} {build}: real {real['passed']}, unfused {unfused['passed']}, emulation {emu['passed']}; {real['execution']}; fallback {real['cpu_fallback_nodes']}")
        assert real["providers"][0] == CUDA
        assert real["emulated"] is bool(real["cpu_fallback_nodes"])
        assert real["passed"] or not emu["passed"], (build, "emulation passed what real FP16 rejects", real["reason"])
        emu_nf = sum(o.get("nonfinite", 0) for o in emu["outputs"].values())
        raw_nf = sum(o.get("nonfinite", 0) for o in unfused["outputs"].values())
        assert emu["passed"] == unfused["passed"], (build, emu["reason"], unfused["reason"])
        assert (emu_nf > 0) == (raw_nf > 0), (build, emu_nf, raw_nf)
        if build == "plan":
            assert real["passed"] and emu["passed"]
        else:
            assert not emu["passed"]  # every example overflows in all-FP16


#: Ops that may lack a CUDA kernel in onnxruntime (placed on the CPU in a CUDA session).
_CPU_ONLY_CANDIDATES = [
    ("LpNormalization", {"axis": -1, "p": 2}),
    ("Celu", {"alpha": 1.0}),
    ("Hardmax", {"axis": -1}),
    ("Shrink", {"lambd": 0.5}),
    ("MeanVarianceNormalization", {"axes": [1]}),
    ("Det", {}),
]


def _fp16_chain(op: str, attrs: dict) -> onnx.ModelProto:
    """x (FP32) -> Cast FP16 -> Mul (FP16) -> ``op`` (FP16) -> Cast FP32 -> y."""
    k = numpy_helper.from_array(np.array(2.0, np.float16), "k")
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], name="to16", to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["xh", "k"], ["mh"], name="scale"),
        helper.make_node(op, ["mh"], ["oh"], name="suspect", **attrs),
        helper.make_node("Cast", ["oh"], ["y"], name="to32", to=TensorProto.FLOAT),
    ]
    shape = [8, 8] if op == "Det" else ["N", 8]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [] if op == "Det" else shape)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], out, [k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@needs_cuda
def test_cpu_fallback_is_detected_and_verified_through_emulation(tmp_path):
    """Oracle: ``session.disable_cpu_ep_fallback=1`` fails exactly when a node needs the CPU.
    Seen on the H200 with onnxruntime-gpu 1.31.1: Hardmax, MeanVarianceNormalization and Det
    have no CUDA kernel (FP16 runs on the CPU behind inserted casts); LpNormalization and
    Shrink do."""
    x = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    seen = []
    for op, attrs in _CPU_ONLY_CANDIDATES:
        model = _fp16_chain(op, attrs)
        try:
            with OnnxRuntimeRunner(model, providers=GPU, record_placement=True) as runner:
                runner.infer({"x": x})
                placement = runner.node_placement()
        except ModelError as exc:
            if not _cannot_run_in_fp16(exc):
                raise
            seen.append(f"{op}: cannot run in FP16 ({str(exc)[:120]})")
            continue
        try:
            with OnnxRuntimeRunner(model, providers=GPU, disable_cpu_fallback=True):
                needs_cpu = False
        except ModelError as exc:
            needs_cpu = True
            seen.append(f"{op}: oracle refused: {str(exc)[:200]}")
        found = {f["node"] for f in fp16_cpu_fallback(model, placement)}
        seen.append(f"{op}: oracle says CPU={needs_cpu}, detected {sorted(found)}, placement {placement}")
        assert bool(found) == needs_cpu, seen[-1]
        if "suspect" in placement:  # not inlined or fused away: then it is the one found
            assert ("suspect" in found) == (placement["suspect"]["provider"] == CPU), seen[-1]
        assert "scale" not in found  # the Mul has a CUDA FP16 kernel
        if needs_cpu:
            np.savez(tmp_path / "h.npz", x=x)
            holdout = discover_shards([str(tmp_path / "h.npz")], "holdout")
            onnx.save(model, str(tmp_path / "cand.onnx"))
            fp32 = _fp32_twin(model)
            onnx.save(fp32, str(tmp_path / "ref.onnx"))
            report = verify_on_cuda(tmp_path / "ref.onnx", tmp_path / "cand.onnx", holdout, VerifySettings(), providers=GPU)
            assert report["emulated"] is True and "fell back to emulation" in report["execution"]
            assert {f["node"] for f in report["cpu_fallback_nodes"]} == found
            print("\n".join(seen))
            return
    print("\n".join(seen))
    pytest.skip("every candidate op has a CUDA kernel in this onnxruntime: nothing falls back to the CPU")


def test_cannot_run_in_fp16_is_only_onnxruntime_refusing_fp16():
    """The CUDA fallback test skips a candidate op only when onnxruntime refuses it in FP16; runs
    on the CPU (CI): a real refusal (Celu's schema has no FP16) counts, other failures do not."""
    with pytest.raises(ModelError) as info:
        OnnxRuntimeRunner(_fp16_chain("Celu", {"alpha": 1.0}), providers=[CPU]).activate()
    assert _cannot_run_in_fp16(info.value), str(info.value)
    no_kernel = ModelError("onnxruntime cannot load the model: [ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Hardmax(13) node with name 'suspect'")
    assert _cannot_run_in_fp16(no_kernel)
    with pytest.raises(ModelError) as missing:
        OnnxRuntimeRunner(str(Path("no-such-model.onnx")), providers=[CPU]).activate()
    assert not _cannot_run_in_fp16(missing.value), str(missing.value)
    assert not _cannot_run_in_fp16(RuntimeError("NOT_IMPLEMENTED"))  # only the runner's ModelError


def _fp32_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same chain in FP32 (the reference): casts become Identity, the constant FP32."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    for node in twin.graph.node:
        if node.op_type == "Cast":
            node.op_type = "Identity"
            del node.attribute[:]
    twin.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(2.0, np.float32), "k"))
    return twin


def _gpu0_name() -> str:
    """Name of CUDA device 0 as nvidia-smi reports it (independent of the code under test), else
    as the driver reports it."""
    import shutil
    import subprocess

    from fp16guard.runners.tensorrt_env import gpu_name

    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0].strip()
    return gpu_name(0)


@needs_cuda
def test_profile_on_cuda(tmp_path):
    from fp16guard.backends.profile import profile_artifact, speed_summary
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model, save_model

    path = examples.save_model("mlp", tmp_path / "m.onnx")
    artifact = save_model(to_mixed_precision(load_model(path), {"head/Gemm"}), tmp_path / "a.onnx")
    record = make_backend(None).profile(path, artifact, examples.sample_inputs("mlp", 4), [1, 32])
    print(record)
    assert record["measured"] and record["fp16_kernels"] and record["providers"][0] == CUDA
    assert record["device"] == _gpu0_name(), record["device"]
    assert [r["batch"] for r in record["batches"]] == [1, 32]
    assert all(r["fp32_ms"] > 0 and r["artifact_ms"] > 0 and r["all_fp16_ms"] > 0 for r in record["batches"])
    assert "than FP32" in speed_summary(record) and "not FP16's" not in speed_summary(record)
    assert profile_artifact(path, artifact, examples.sample_inputs("mlp", 4), [2], GPU, warmup=1, iterations=3)["iterations"] == 3
