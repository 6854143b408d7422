"""Verification task: the built artifact against the FP32 model on holdout data."""

from __future__ import annotations

from prefect import task

from fp16guard.io.shards import ShardRef
from fp16guard.settings import VerifySettings


@task(name="verify-against-fp32", tags=["fp16guard-gpu"])
def verify_task(
    model_path: str,
    model_sha256: str,
    artifact_path: str,
    artifact_sha256: str,
    holdout: list[ShardRef],
    holdout_sha256: list[str],
    settings: VerifySettings,
    code: str,
    batch_size: int | None = None,
    providers: list[str] | None = None,
) -> dict:
    """Run the FP32 model and the artifact on every holdout sample and compare.

    Cached on the model, artifact and holdout digests, the tolerances and the library code.
    On the CPU provider the artifact's FP16 parts run through FP16 storage emulation
    (NOTES #1–2); ``execution`` in the result says which.

    Returns:
        The content of ``verification.json`` (``passed``, ``reason``, per-output figures).
        A failed verification is returned, not raised: the flow records it, then fails the run.
    """
    from fp16guard.verify.compare import verify

    return verify(model_path, artifact_path, holdout, settings, batch_size=batch_size, providers=providers or None)


@task(name="verify-engine-against-fp32", tags=["fp16guard-gpu"])
def verify_engine_task(
    model_path: str,
    engine_path: str,
    holdout: list[ShardRef],
    settings: VerifySettings,
    batch_size: int | None = None,
    providers: list[str] | None = None,
) -> dict:
    """Run the FP32 model (onnxruntime) and the TensorRT engine on every holdout sample and
    compare, with the same figures and gate as the onnxruntime backend. Not cached: an engine
    build is not bit-reproducible, so its digest would never repeat."""
    from fp16guard.backends.tensorrt.verify import verify_engine

    return verify_engine(model_path, engine_path, holdout, settings, batch_size=batch_size, providers=providers or None)
