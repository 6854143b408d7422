"""The backend contract: what turns a plan into a deployable artifact, checks it and times it.

A backend is chosen per run by name (``RunParameters.backend``) through
:mod:`fp16guard.backends.registry`; nothing outside the registry compares backend names. Each
implementation is one module:

* :mod:`fp16guard.backends.onnxruntime`: the mixed-precision ONNX model on onnxruntime, either on
  the CPU provider (FP16 checked through FP16 storage emulation) or on the CUDA provider (real
  FP16 kernels, nodes placed on the CPU detected and checked through emulation);
* :mod:`fp16guard.backends.tensorrt.backend`: a TensorRT engine built from the plan.

Contract (every method may raise :class:`fp16guard.errors.UserError` subclasses for problems the
user can fix; nothing here imports Prefect):

* ``preflight()``: cheap checks before any work (the runtime is installed and usable).
* ``build(request)``: writes the artifact into ``request.out_dir`` and returns the lineage record
  stored in the manifest's ``backend`` field; it has at least ``name``, ``implementation``,
  ``artifact`` (file name in the run folder) and ``artifact_sha256``.
* ``verify(model_path, artifact_path, holdout, settings, batch_size)``: the content of
  ``verification.json`` (see :func:`fp16guard.verify.compare.verify`); it names ``execution``
  (what ran the candidate), ``emulated``, ``providers`` and, for GPU backends,
  ``cpu_fallback_nodes``.
* ``profile(model_path, artifact_path, sample_feeds, batches)``: latency record
  (:func:`fp16guard.backends.profile.profile_artifact`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Backend", "BuildRequest"]


@dataclass(frozen=True)
class BuildRequest:
    """Everything a backend may need to build its artifact.

    Attributes:
        model_path: the FP32 model.
        mixed_path: ``model.mixed.onnx`` (FP16 with the plan's FP32 islands), already written.
        plan: the content of ``plan.json``.
        out_dir: the staged run folder; the artifact goes here.
        shards: calibration and holdout ShardRefs (shapes the artifact must accept).
        batch_size: ``RunParameters.batch_size``.
        options: backend-specific settings (e.g. ``tensorrt_mode``, ``tensorrt_workspace_mib``,
            ``timing_cache_dir``).
    """

    model_path: str
    mixed_path: str
    plan: Mapping[str, Any]
    out_dir: str
    shards: Sequence[Any] = ()
    batch_size: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A build-and-run target (structural protocol; see the module docstring for the contract).

    Attributes:
        name: the registry name the user chose ("onnxruntime", "tensorrt").
        implementation: the concrete variant ("onnxruntime-cpu", "onnxruntime-gpu", "tensorrt").
        artifact: file name of the released artifact in the run folder.
        providers: onnxruntime providers for statistics and the FP32 reference, resolved.
        real_fp16: True when verification runs real FP16 kernels.
    """

    name: str
    implementation: str
    artifact: str
    providers: list[str]
    real_fp16: bool

    def preflight(self) -> None: ...

    def build(self, request: BuildRequest) -> dict: ...

    def verify(self, model_path: str | os.PathLike, artifact_path: str | os.PathLike, holdout: Sequence[Any], settings: Any, batch_size: int | None = None) -> dict: ...

    def profile(
        self,
        model_path: str | os.PathLike,
        artifact_path: str | os.PathLike,
        sample_feeds: Mapping[str, np.ndarray],
        batches: Sequence[int],
    ) -> dict: ...
