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
    backend: str = "onnxruntime",
) -> dict:
    """Run the FP32 model and the artifact on every holdout sample and compare, with the backend
    ``backend`` (registry name) on ``providers`` (resolved by the flow: part of the cache key, so
    CPU emulation and real FP16 kernels are different results).

    Cached on the model, artifact and holdout digests, the tolerances, the backend, the providers
    and the library code. ``execution`` in the result says what ran the candidate (real FP16
    kernels, or FP16 storage emulation and why) and ``cpu_fallback_nodes`` lists FP16 nodes
    onnxruntime put on the CPU inside a CUDA session.

    Returns:
        The content of ``verification.json`` (``passed``, ``reason``, per-output figures).
        A failed verification is returned, not raised: the flow records it, then fails the run.
    """
    from fp16guard.backends.registry import get_backend

    return get_backend(backend, providers).verify(model_path, artifact_path, holdout, settings, batch_size=batch_size)
