"""Verification tasks: the built artifact against the FP32 model on holdout data, whole or one
group of holdout shards at a time (issue 18: the flow fans groups out and merges them)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fp16guard.io.shards import ShardRef
from fp16guard.settings import VerifySettings

#: Arguments of :func:`verify_task` left out of its cache key (they do not change the result).
VERIFY_CACHE_EXCLUDE = ["model_path", "artifact_path", "holdout", "batch_size"]


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
    onnxruntime put on the CPU inside a CUDA session. The flow's verification pass keys its
    merged result by this task's cache key (:class:`tasks.caching.TaskCache`), so the two share
    entries.

    Returns:
        The content of ``verification.json`` (``passed``, ``reason``, per-output figures).
        A failed verification is returned, not raised: the flow records it, then fails the run.
    """
    from fp16guard.backends.registry import get_backend

    return get_backend(backend, providers).verify(model_path, artifact_path, holdout, settings, batch_size=batch_size)


@task(name="verify-group", task_run_name="verify {label}", tags=["fp16guard-gpu"], cache_policy=NO_CACHE, persist_result=False)
def verify_group_task(
    model_path: str,
    artifact_path: str,
    holdout: list[ShardRef],
    settings: VerifySettings,
    batch_size: int | None = None,
    providers: list[str] | None = None,
    backend: str = "onnxruntime",
    label: str = "",
) -> dict:
    """Verify the artifact on one group of consecutive holdout shards, keeping each shard's
    accumulators so that the flow can merge the groups into one pass's verdict
    (:func:`fp16guard.verify.compare.merge_comparisons`). Not cached itself: the flow caches the
    merged verdict under :func:`verify_task`'s key.

    Args:
        label: the task run's name, e.g. "holdout 1-4 of 9".

    Returns:
        ``{"report": the backend's report for these shards (execution, providers, fallback
        nodes), "comparison": fp16guard.verify.compare.Comparison (per-shard parts)}``.
    """
    from fp16guard.backends.registry import get_backend
    from fp16guard.verify.compare import collect_comparison

    with collect_comparison() as comparison:
        report = get_backend(backend, providers).verify(model_path, artifact_path, holdout, settings, batch_size=batch_size)
    return {"report": report, "comparison": comparison}
