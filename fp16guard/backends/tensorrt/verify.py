"""Verify a TensorRT engine against the FP32 model with the same figures and gate as the
onnxruntime backend (:func:`fp16guard.verify.compare.compare_runners`)."""

from __future__ import annotations

import os
from typing import Sequence

from fp16guard.io.shards import ShardRef
from fp16guard.settings import VerifySettings


def verify_engine(
    model_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    holdout: Sequence[ShardRef],
    settings: VerifySettings | None = None,
    batch_size: int | None = None,
    providers: list[str] | None = None,
) -> dict:
    """Compare ``engine_path`` (TensorRT runtime) with the FP32 model (onnxruntime) on every
    holdout sample.

    Returns:
        The content of ``verification.json`` (see :func:`fp16guard.verify.compare.verify`), with
        ``execution`` naming the TensorRT version.

    Raises:
        TensorRTUnavailable: no tensorrt module or GPU.
    """
    from fp16guard.backends.tensorrt.env import require_tensorrt
    from fp16guard.runners.tensorrt import TensorRTRunner
    from fp16guard.io.model import load_model
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner
    from fp16guard.verify.compare import compare_runners

    trt = require_tensorrt()
    settings = settings or VerifySettings()
    model = load_model(model_path)
    with OnnxRuntimeRunner(model, providers=providers) as ref_run, TensorRTRunner(engine_path) as engine_run:
        report = compare_runners(model, ref_run, model, engine_run, holdout, settings, batch_size)
        ref_providers = ref_run.providers
    report.update(execution=f"TensorRT {trt.__version__} engine (real FP16 kernels)", emulated=False, providers=ref_providers)
    return report
