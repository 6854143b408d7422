"""The TensorRT backend behind the :class:`fp16guard.backends.base.Backend` contract.

Wraps :func:`.build.build_engine` and :func:`.verify.verify_engine`. TensorRT has never run on
the machines this project was developed on (docs/GPU.md): its code follows the documented API
and its tests skip without TensorRT and a GPU. Profiling an engine is not implemented: the
record says so instead of timing something else.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from fp16guard.backends.base import BuildRequest

__all__ = ["TensorRTBackend", "make_backend"]


class TensorRTBackend:
    """TensorRT engine with the plan's FP32 islands; FP32 reference on onnxruntime."""

    name = "tensorrt"
    implementation = "tensorrt"
    artifact = "model.engine"
    real_fp16 = True

    def __init__(self, providers: Sequence[str] | None):
        self._requested = list(providers or [])
        self._providers: list[str] | None = None

    @property
    def providers(self) -> list[str]:
        """Providers of the FP32 reference and statistics (resolved on first use: ``auto``
        probes CUDA, which preflight must not pay for when TensorRT is missing anyway)."""
        if self._providers is None:
            from fp16guard.runners.onnxrt import choose_providers

            self._providers = choose_providers(self._requested)
        return self._providers

    def preflight(self) -> None:
        """Raise TensorRTUnavailable (names what to install) before any work is done."""
        from fp16guard.backends.tensorrt.env import require_tensorrt

        require_tensorrt()

    def build(self, request: BuildRequest) -> dict:
        """Build ``model.engine`` (:func:`.build.build_engine`); options ``tensorrt_mode``,
        ``tensorrt_workspace_mib``, ``timing_cache_dir``.

        Raises:
            VerificationFailed: the built engine ignores the plan's FP32 constraints.
        """
        from pathlib import Path

        from fp16guard.backends.tensorrt.build import build_engine
        from fp16guard.backends.tensorrt.profiles import observed_shapes
        from fp16guard.io.hashing import sha256_file
        from fp16guard.io.model import input_specs, load_graph

        options = dict(request.options)
        shapes = observed_shapes(list(request.shards), input_specs(load_graph(request.model_path)), request.batch_size)
        record = build_engine(
            request.model_path, request.mixed_path, request.plan, request.out_dir, shapes,
            mode=options.get("tensorrt_mode", "auto"),
            workspace_bytes=int(options.get("tensorrt_workspace_mib", 4096)) << 20,
            timing_cache_dir=options.get("timing_cache_dir"),
        )
        engine = Path(request.out_dir) / self.artifact
        return {"name": self.name, "implementation": self.implementation, "artifact": self.artifact, "artifact_sha256": sha256_file(engine), **record}

    def verify(self, model_path, artifact_path, holdout, settings, batch_size: int | None = None) -> dict:
        """:func:`.verify.verify_engine` (real FP16 kernels of the engine)."""
        from fp16guard.backends.tensorrt.verify import verify_engine

        report = verify_engine(model_path, artifact_path, holdout, settings, batch_size=batch_size, providers=self.providers)
        report.setdefault("cpu_fallback_nodes", [])
        return report

    def profile(self, model_path, artifact_path, sample_feeds: Mapping[str, np.ndarray], batches: Sequence[int], **options: Any) -> dict:
        """Not implemented for engines: returns a record saying so (nothing is timed)."""
        return {
            "measured": False,
            "backend": self.implementation,
            "batches": [],
            "note": "latency of TensorRT engines is not profiled by fp16guard yet (TensorRT never ran on the machines it was developed on)",
        }


def make_backend(providers: Sequence[str] | None = None) -> TensorRTBackend:
    """Registry factory."""
    return TensorRTBackend(providers)
