"""The onnxruntime backends: the mixed-precision ONNX model, verified on the CPU or on a GPU.

* :class:`OnnxRuntimeCPU` (``onnxruntime-cpu``): the CPU provider computes most FP16 nodes in
  FP32 and hides overflow, so FP16 is checked through FP16 storage emulation
  (:mod:`fp16guard.graph.emulate`). Latency on the CPU says nothing about FP16 and is not timed.
* :class:`OnnxRuntimeGPU` (``onnxruntime-gpu``): the CUDA provider runs real FP16 kernels; the
  FP32 reference runs there too with TF32 off. Nodes that onnxruntime places on the CPU provider
  inside the CUDA session (ops without a CUDA kernel) would hide overflow the same way: they are
  found from the profiler (:meth:`OnnxRuntimeRunner.node_placement`) and, when any of them
  touches an FP16 tensor, the whole verification falls back to FP16 storage emulation (on the
  CPU provider, as the CPU backend does); ``verification.json`` names them (``cpu_fallback_nodes``) and says which
  check ran (``execution``).

:func:`make_backend` chooses: explicit providers decide; none (or ``auto``) means CUDA when a GPU
and onnxruntime-gpu are present (:func:`fp16guard.runners.onnxrt.cuda_usable`), else CPU.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from fp16guard.backends.base import BuildRequest

__all__ = ["OnnxRuntimeCPU", "OnnxRuntimeGPU", "fp16_cpu_fallback", "make_backend", "verify_on_cuda"]

ARTIFACT = "model.mixed.onnx"
#: Ops that may run on the CPU inside a CUDA session without hiding FP16 overflow: casts round
#: exactly as on the GPU; copies move bytes.
_HARMLESS_ON_CPU = frozenset({"Cast", "MemcpyToHost", "MemcpyFromHost"})


class _OnnxRuntimeBase:
    name = "onnxruntime"
    artifact = ARTIFACT
    implementation = "onnxruntime"
    real_fp16 = False

    def __init__(self, providers: Sequence[str], requested: Sequence[str] | None = None):
        self.providers = list(providers)
        #: the providers asked for, when they differ from those that run (CUDA not usable here)
        self.requested = list(requested) if requested and list(requested) != self.providers else None

    def preflight(self) -> None:
        """Nothing to check beyond what the runners check: onnxruntime is a dependency."""

    def build(self, request: BuildRequest) -> dict:
        """The artifact is ``model.mixed.onnx`` itself (written by the build step before).

        Returns:
            ``{"name", "implementation", "artifact", "artifact_sha256", "providers"}``.
        """
        from fp16guard.io.model import model_digest

        record = {
            "name": self.name,
            "implementation": self.implementation,
            "artifact": self.artifact,
            "artifact_sha256": model_digest(request.mixed_path),
            "providers": self.providers,
        }
        if self.requested:
            record["requested_providers"] = self.requested
        return record

    def profile(self, model_path, artifact_path, sample_feeds: Mapping[str, np.ndarray], batches: Sequence[int], **options: Any) -> dict:
        """Latency of FP32, the artifact and all-FP16 (:func:`fp16guard.backends.profile.profile_artifact`)."""
        from fp16guard.backends.profile import profile_artifact

        return profile_artifact(model_path, artifact_path, sample_feeds, batches, providers=self.providers, **options)


class OnnxRuntimeCPU(_OnnxRuntimeBase):
    """onnxruntime on the CPU provider; FP16 verified through FP16 storage emulation."""

    implementation = "onnxruntime-cpu"

    def verify(self, model_path, artifact_path, holdout, settings, batch_size: int | None = None) -> dict:
        """:func:`fp16guard.verify.compare.verify` on the CPU (emulation for FP16 candidates)."""
        from fp16guard.verify.compare import verify

        report = verify(model_path, artifact_path, holdout, settings, batch_size=batch_size, providers=self.providers)
        report.setdefault("cpu_fallback_nodes", [])
        return report


class OnnxRuntimeGPU(_OnnxRuntimeBase):
    """onnxruntime on the CUDA provider: real FP16 kernels, TF32 off, CPU placements detected."""

    implementation = "onnxruntime-gpu"
    real_fp16 = True

    def verify(self, model_path, artifact_path, holdout, settings, batch_size: int | None = None) -> dict:
        """:func:`verify_on_cuda` with this backend's providers."""
        return verify_on_cuda(model_path, artifact_path, holdout, settings, batch_size=batch_size, providers=self.providers)


def make_backend(providers: Sequence[str] | None = None) -> _OnnxRuntimeBase:
    """The onnxruntime backend for ``providers`` (None/empty/``["auto"]``: CUDA when usable).

    CUDA asked for explicitly but not usable on this machine (a CPU-only onnxruntime, no GPU, no
    cuDNN) gives the CPU backend, with one warning: what really runs is ``onnxruntime-cpu`` with
    FP16 storage emulation, and its record says so (``requested_providers``); CPU timings are
    never taken for FP16 speed.
    """
    from fp16guard.runners.onnxrt import CPU, CUDA, choose_providers, cuda_usable, warn_once

    chosen = choose_providers(providers)
    if chosen[0] != CUDA:
        return OnnxRuntimeCPU(chosen)
    if cuda_usable():
        return OnnxRuntimeGPU(chosen)
    kept = [p for p in chosen if p != CUDA] or [CPU]
    warn_once(
        f"{CUDA} was requested but is not usable here (onnxruntime-gpu and an NVIDIA GPU are needed); "
        f"running onnxruntime-cpu on {', '.join(kept)}: FP16 is checked through storage emulation and no FP16 speed is measured"
    )
    return OnnxRuntimeCPU(kept, requested=chosen)


def fp16_cpu_fallback(model, placement: Mapping[str, Mapping[str, str]]) -> list[dict]:
    """Nodes onnxruntime ran on the CPU provider that compute on FP16 tensors.

    Args:
        model: the candidate (``ModelProto``, weights not needed).
        placement: :meth:`fp16guard.runners.onnxrt.OnnxRuntimeRunner.node_placement`.

    Returns:
        ``[{"node", "op_type"}]`` in graph order, then nodes the optimised graph created (fused
        names onnxruntime gave; their types are unknown, so they count unless harmless ops).
        Casts and copies do not count: they round exactly as on the GPU.
    """
    from onnx import TensorProto

    from fp16guard.graph.info import tensor_types

    types = tensor_types(model).elem
    found: list[dict] = []
    graph_nodes = {n.name: n for n in model.graph.node if n.name}
    for node in model.graph.node:
        where = placement.get(node.name)
        if not where or where.get("provider") != "CPUExecutionProvider" or node.op_type in _HARMLESS_ON_CPU:
            continue
        if any(types.get(t) == TensorProto.FLOAT16 for t in list(node.input) + list(node.output) if t):
            found.append({"node": node.name, "op_type": node.op_type})
    for name, where in placement.items():
        if name in graph_nodes or where.get("provider") != "CPUExecutionProvider":
            continue
        op = where.get("op_type", "")
        if op in _HARMLESS_ON_CPU or op.startswith("Memcpy") or "InsertedPrecisionFreeCast" in name:
            continue
        found.append({"node": name, "op_type": op or "?", "note": "node of onnxruntime's optimised graph (types unknown)"})
    return found


def verify_on_cuda(
    model_path: str | os.PathLike,
    artifact_path: str | os.PathLike,
    holdout: Sequence,
    settings=None,
    batch_size: int | None = None,
    providers: Sequence[str] | None = None,
) -> dict:
    """Verify the artifact on real FP16 kernels of the CUDA provider, honest about placement.

    First a profiled session of the candidate runs one slice of the first holdout shard to learn
    where onnxruntime placed each node. If no node that touches FP16 ran on the CPU provider,
    the candidate runs as built (real FP16); otherwise the whole verification runs through FP16
    storage emulation on the CPU provider, and the report says so.

    Returns:
        The report of :func:`fp16guard.verify.compare.verify` plus ``cpu_fallback_nodes`` (list
        of ``{"node", "op_type"}``) and ``placement`` (``{provider: node count}``).

    Raises:
        DataError / NonFiniteError / ModelError: as :func:`fp16guard.verify.compare.verify`.
    """
    from fp16guard.errors import DataError
    from fp16guard.io.model import input_specs, load_model
    from fp16guard.io.shards import iter_slices, load_shard, prepare_feeds, shard_context, slice_size, batch_count
    from fp16guard.runners.onnxrt import CUDA, CPU, OnnxRuntimeRunner
    from fp16guard.verify.compare import has_fp16, verify

    providers = list(providers or [CUDA, CPU])
    if not holdout:
        raise DataError("the holdout set is empty; expected at least one shard to verify on")
    candidate = load_model(artifact_path)
    if not has_fp16(candidate):
        report = verify(model_path, candidate, holdout, settings, batch_size=batch_size, providers=providers)
        report.update(cpu_fallback_nodes=[])
        return report
    specs = input_specs(candidate)
    first = holdout[0]
    feeds = prepare_feeds(first, load_shard(first), specs)
    size = slice_size(specs, batch_count(feeds), batch_size)
    piece = next(iter_slices(feeds, size))
    with OnnxRuntimeRunner(candidate, providers=providers, record_placement=True) as probe:
        with shard_context(first):
            probe.infer(piece)
        placement = probe.node_placement()
        used = probe.providers
    del feeds, piece
    fallback = fp16_cpu_fallback(candidate, placement) if CUDA in used else []
    counts: dict[str, int] = {}
    for where in placement.values():
        counts[where["provider"]] = counts.get(where["provider"], 0) + 1
    if CUDA not in used:
        # onnxruntime could not start CUDA for this model: say so, check on the CPU honestly.
        report = verify(model_path, candidate, holdout, settings, batch_size=batch_size, providers=[CPU])
        report["execution"] += "; the CUDA provider was requested but onnxruntime did not use it for this model"
    elif fallback:
        # Emulation on the CPU provider: the configuration whose faithfulness the CPU tests check
        # (tests/test_emulate.py); slower than the GPU, and only taken in this case.
        report = verify(model_path, candidate, holdout, settings, batch_size=batch_size, providers=[CPU], emulate=True)
        names = ", ".join(f"{f['node']} ({f['op_type']})" for f in fallback[:5]) + (f" and {len(fallback) - 5} more" if len(fallback) > 5 else "")
        report["execution"] += (
            f"; fell back to emulation because onnxruntime ran {len(fallback)} FP16 node(s) on the CPU provider inside the CUDA "
            f"session, where they compute in FP32 and would hide overflow: {names}"
        )
    else:
        report = verify(model_path, candidate, holdout, settings, batch_size=batch_size, providers=providers, emulate=False)
        report["execution"] = f"onnxruntime {CUDA}: candidate run as built on real FP16 kernels (TF32 off; every FP16 node ran on the GPU)"
    report.update(cpu_fallback_nodes=fallback, placement=counts)
    return report
