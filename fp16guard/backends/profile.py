"""Latency of the artifact against FP32 and against the all-FP16 build, on the worker's runtime.

Three models run on the same providers with the same inputs: the FP32 model, the artifact (FP16
with the plan's FP32 islands) and the all-FP16 build (every node FP16: usually wrong, so an
unreachable reference for speed). Each is timed with IOBinding (inputs copied to the device
once, outputs left there), after warm-up runs, and reported as the median of the timed runs in
milliseconds. Summary per batch: ``speedup`` = FP32 / artifact, ``fp16_speedup`` = FP32 /
all-FP16, ``gain_kept`` = (FP32 - artifact) / (FP32 - all-FP16), the share of FP16's gain that the
artifact keeps (None when all-FP16 is not faster than FP32 by at least 5%: then there is no
gain to keep, which happens at small batches where kernel launches dominate; docs/GPU.md).

On the CPU provider FP16 nodes run as FP32 behind casts: a CPU latency says nothing about FP16
speed. By default nothing is timed there and the record says why (``measured: False``); with
``time_on_cpu=True`` a few runs are timed and the note says whose latency it is.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_PROFILE_BATCH", "default_batches", "measure_latency", "profile_artifact", "speed_summary"]

#: The extra batch profiled when the model's batch is dynamic (a throughput setting).
DEFAULT_PROFILE_BATCH = 32
CPU_NOTE = (
    "not measured: onnxruntime's CPU provider runs FP16 nodes as FP32 behind casts, so a CPU latency says nothing "
    "about FP16 speed; run on a GPU worker (onnxruntime-gpu) to profile"
)
_NO_GAIN = 0.05


def default_batches(specs, shard_batch: int) -> list[int]:
    """The batches to profile when the user names none: the model's static batch, else the
    calibration shard's batch and :data:`DEFAULT_PROFILE_BATCH`.

    Args:
        specs: :func:`fp16guard.io.model.input_specs` of the FP32 model.
        shard_batch: samples in the first calibration shard.
    """
    static = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    dynamic = any(s.shape and not isinstance(s.shape[0], int) for s in specs)
    if static and not dynamic:
        return sorted(static)[:1]
    return sorted({max(1, int(shard_batch)), DEFAULT_PROFILE_BATCH})


def _feeds_at(sample: Mapping[str, np.ndarray], batch: int, dynamic: set[str]) -> dict[str, np.ndarray]:
    """The sample's arrays with axis 0 resized to ``batch`` (samples repeated), for the inputs
    whose batch is dynamic; others unchanged."""
    out = {}
    for name, arr in sample.items():
        arr = np.asarray(arr)
        if name in dynamic and arr.ndim and arr.shape[0] != batch:
            arr = arr[np.arange(batch) % arr.shape[0]]
        out[name] = np.ascontiguousarray(arr)
    return out


def measure_latency(
    model,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence[str],
    warmup: int = 10,
    iterations: int = 50,
    external_data_dir: str | os.PathLike | None = None,
    tf32: bool = True,
) -> dict:
    """Median latency of one model with IOBinding.

    Args:
        model: path or ``ModelProto``.
        feeds: input name -> array (cast to the session's input types here).
        providers: onnxruntime providers (CUDA options as in the runner: TF32 off).
        warmup: untimed runs first (cuDNN algorithm search, allocations).
        iterations: timed runs.
        tf32: CUDA provider ``use_tf32`` (default True: onnxruntime's own default, what a
            deployment gets; verification and statistics turn it off, timings keep the default).

    Returns:
        ``{"median_ms", "min_ms", "iterations", "providers"}``.
    """
    import onnxruntime as ort

    from fp16guard.runners.onnxrt import CUDA, OnnxRuntimeRunner

    options = {"use_tf32": "1" if tf32 else "0"}
    with OnnxRuntimeRunner(model, providers=list(providers), external_data_dir=external_data_dir, cuda_options=options) as runner:
        session = runner.session
        on_gpu = runner.providers[0] == CUDA
        device = "cuda" if on_gpu else "cpu"
        binding = session.io_binding()
        for meta in session.get_inputs():
            want = np.float16 if meta.type == "tensor(float16)" else None
            arr = np.asarray(feeds[meta.name])
            if want is not None and arr.dtype != want:
                arr = arr.astype(want)
            elif meta.type == "tensor(float)" and arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            binding.bind_ortvalue_input(meta.name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), device, 0))
        for meta in session.get_outputs():
            binding.bind_output(meta.name, device)
        for _ in range(max(0, warmup)):
            session.run_with_iobinding(binding)
        times = []
        for _ in range(max(1, iterations)):
            start = time.perf_counter()
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            times.append((time.perf_counter() - start) * 1e3)
        used = runner.providers
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iterations": len(times), "providers": used}


def profile_artifact(
    model_path: str | os.PathLike,
    artifact_path: str | os.PathLike,
    sample_feeds: Mapping[str, np.ndarray],
    batches: Sequence[int],
    providers: Sequence[str],
    warmup: int | None = None,
    iterations: int | None = None,
    time_on_cpu: bool = False,
    all_fp16=None,
    tf32: bool = True,
) -> dict:
    """Time FP32, the artifact and the all-FP16 build at each batch size.

    Args:
        model_path: the FP32 model.
        artifact_path: the mixed-precision model (``model.mixed.onnx``).
        sample_feeds: real inputs (e.g. the first calibration shard, prepared for the FP32
            model); repeated or cut along axis 0 to each batch size.
        batches: batch sizes (inputs with a static batch keep theirs).
        providers: onnxruntime providers (the run's).
        warmup / iterations: default 10 / 50 on a GPU, 1 / 5 on the CPU.
        time_on_cpu: time on the CPU provider too (default: record that nothing was measured).
        all_fp16: the all-FP16 build (``ModelProto`` or path); default: built here from the FP32
            model with :func:`fp16guard.graph.convert.to_mixed_precision` (no FP32 nodes).
        tf32: CUDA ``use_tf32`` for all three models (default True, onnxruntime's default: FP32
            as a deployment runs it; with TF32 off FP32 GEMMs and convolutions are several times
            slower on Hopper, which would flatter FP16).

    Returns:
        ``{"measured", "device", "providers", "fp16_kernels", "note", "warmup", "iterations",
        "batches": [{"batch", "fp32_ms", "artifact_ms", "all_fp16_ms", "speedup",
        "fp16_speedup", "gain_kept"}], "summary"}``.
    """
    from fp16guard.backends.device import device_name
    from fp16guard.io.model import input_specs, load_graph
    from fp16guard.runners.onnxrt import CPU, CUDA

    providers = list(providers)
    on_gpu = bool(providers) and providers[0] == CUDA
    record: dict = {
        "measured": False,
        "device": device_name(providers),
        "providers": providers,
        "fp16_kernels": on_gpu,
        "tf32": bool(tf32) if on_gpu else None,
        "note": None,
        "batches": [],
        "summary": None,
    }
    if not on_gpu and not time_on_cpu:
        record["note"] = CPU_NOTE
        return record
    warmup = warmup if warmup is not None else (10 if on_gpu else 1)
    iterations = iterations if iterations is not None else (50 if on_gpu else 5)
    specs = input_specs(load_graph(model_path))
    dynamic = {s.name for s in specs if s.shape and not isinstance(s.shape[0], int)}
    if all_fp16 is None:
        from fp16guard.graph.convert import to_mixed_precision
        from fp16guard.io.model import load_model

        all_fp16 = to_mixed_precision(load_model(model_path), set(), check=False)
    external = os.path.dirname(os.path.abspath(model_path))
    rows = []
    for batch in dict.fromkeys(int(b) for b in batches):
        feeds = _feeds_at(sample_feeds, batch, dynamic)
        times = {}
        for label, model in (("fp32", str(model_path)), ("artifact", str(artifact_path)), ("all_fp16", all_fp16)):
            times[label] = measure_latency(model, feeds, providers, warmup, iterations, external_data_dir=external if label == "all_fp16" else None, tf32=tf32)
        real_batch = next((int(np.shape(v)[0]) for k, v in feeds.items() if k in dynamic), batch)
        rows.append(_row(real_batch, times["fp32"]["median_ms"], times["artifact"]["median_ms"], times["all_fp16"]["median_ms"]))
        if on_gpu and any((t.get("providers") or [None])[0] != CUDA for t in times.values()):
            # CUDA was asked for but a session ran on the CPU: these are not FP16 kernels' timings.
            on_gpu = False
            record.update(fp16_kernels=False, tf32=None, device=device_name([CPU]), providers=[CPU])
    record.update(measured=True, warmup=warmup, iterations=iterations, batches=rows)
    if not on_gpu:
        record["note"] = "CPU latency (onnxruntime CPU provider): FP16 nodes run as FP32 behind casts, so this is not FP16's speed"
    record["summary"] = speed_summary(record)
    return record


def _row(batch: int, fp32: float, artifact: float, all_fp16: float) -> dict:
    gain = fp32 - all_fp16
    kept = (fp32 - artifact) / gain if gain > _NO_GAIN * fp32 else None
    return {
        "batch": batch,
        "fp32_ms": round(fp32, 4),
        "artifact_ms": round(artifact, 4),
        "all_fp16_ms": round(all_fp16, 4),
        "speedup": round(fp32 / artifact, 3) if artifact > 0 else None,
        "fp16_speedup": round(fp32 / all_fp16, 3) if all_fp16 > 0 else None,
        "gain_kept": None if kept is None else round(kept, 3),
    }


def speed_summary(record: Mapping | None) -> str | None:
    """One line for the run summary: per batch ``"batch 32: 1.32x faster than FP32; keeps 87%
    of the FP16 gain"``; the note when nothing was measured; None without a record."""
    if not record:
        return None
    if not record.get("measured"):
        return record.get("note")
    parts = []
    for row in record.get("batches", []):
        speed = row.get("speedup")
        text = f"batch {row['batch']}: {speed:.2f}x {'faster' if speed >= 1 else 'as fast'} than FP32" if speed else f"batch {row['batch']}: n/a"
        if speed and speed < 1:
            text = f"batch {row['batch']}: {1 / speed:.2f}x slower than FP32"
        kept = row.get("gain_kept")
        if kept is None:
            text += "; FP16 itself is not faster here"
        else:
            text += f"; keeps {kept:.0%} of the FP16 gain" if kept > 0 else "; keeps none of the FP16 gain"
        parts.append(text)
    where = f" ({record.get('device')}{', TF32 on' if record.get('tf32') else ''})" if record.get("device") else ""
    line = " | ".join(parts) + where
    if not record.get("fp16_kernels"):
        line += " — CPU latency, not FP16's"
    return line
