"""Profile tasks: latency of FP32, the artifact and the all-FP16 build on the worker's runtime,
one task per batch size (issue 18: the flow fans them out on its runner and merges the rows)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from fp16guard.io.shards import ShardRef

#: Arguments of :func:`profile_task` left out of its cache key.
PROFILE_CACHE_EXCLUDE = ["model_path", "artifact_path", "sample"]


@task(name="profile-batches")
def profile_batches_task(model_path: str, sample: ShardRef, batches: list[int] | None) -> list[int]:
    """The batch sizes to profile: ``batches`` as given (duplicates dropped, order kept), or by
    default the calibration shard's batch and 32 when the model's batch is dynamic
    (:func:`fp16guard.backends.profile.default_batches`; reads the shard)."""
    from fp16guard.backends.profile import default_batches
    from fp16guard.io.model import input_specs, load_graph
    from fp16guard.io.shards import batch_count, load_shard, prepare_feeds

    if batches:
        return list(dict.fromkeys(int(b) for b in batches))
    specs = input_specs(load_graph(model_path))
    return default_batches(specs, batch_count(prepare_feeds(sample, load_shard(sample), specs)))


@task(name="profile-latency", tags=["fp16guard-gpu"])
def profile_task(
    backend: str,
    providers: list[str],
    device: str,
    model_path: str,
    model_sha256: str,
    artifact_path: str,
    artifact_sha256: str,
    sample: ShardRef,
    sample_sha256: str,
    batches: list[int] | None,
    code: str,
) -> dict:
    """Median latency (IOBinding, after warm-up) of the FP32 model, the artifact and the
    all-FP16 build at ``batches`` (None: the calibration shard's batch and 32 when the batch is
    dynamic), on ``providers``; see :func:`fp16guard.backends.profile.profile_artifact`. The flow
    profiles one batch size per task (:func:`profile_batch_task`, through this task's cache) and
    merges the records (:func:`fp16guard.backends.profile_parts.merge_profiles`).

    Cached on the digests, the batches, the providers, the ``device`` name (timings belong to
    one GPU model) and the code. On the CPU nothing is timed: the record says why.

    Returns:
        The profile record (``measured``, ``device``, ``batches`` rows, ``summary``, ``note``).
    """
    from fp16guard.backends.profile import default_batches
    from fp16guard.backends.registry import get_backend
    from fp16guard.io.model import input_specs, load_graph
    from fp16guard.io.shards import batch_count, load_shard, prepare_feeds

    specs = input_specs(load_graph(model_path))
    feeds = prepare_feeds(sample, load_shard(sample), specs)
    chosen = list(batches) if batches else default_batches(specs, batch_count(feeds))
    record = get_backend(backend, providers).profile(model_path, artifact_path, feeds, chosen)
    record["device"] = record.get("device") or device
    return record


@task(name="profile-batch", task_run_name="profile batch {batch}", tags=["fp16guard-gpu"], cache_policy=NO_CACHE, persist_result=False)
def profile_batch_task(
    store_url: str,
    backend: str,
    providers: list[str],
    device: str,
    model_path: str,
    model_sha256: str,
    artifact_path: str,
    artifact_sha256: str,
    sample: ShardRef,
    sample_sha256: str,
    batch: int,
    code: str,
) -> dict:
    """:func:`profile_task` at one batch size, through that task's cache in the store
    (:class:`tasks.caching.TaskCache`: same key, computed once under its lock). A plain task, so
    a Dask worker can run it (a task carrying its cache options does not pickle).

    Returns:
        The profile record of ``batch`` (one row when timed).
    """
    from tasks.caching import TaskCache

    inputs = {
        "backend": backend, "providers": providers, "device": device, "model_path": model_path, "model_sha256": model_sha256,
        "artifact_path": artifact_path, "artifact_sha256": artifact_sha256, "sample": sample, "sample_sha256": sample_sha256,
        "batches": [int(batch)], "code": code,
    }
    cache = TaskCache(store_url, "profile", profile_task, PROFILE_CACHE_EXCLUDE)
    return cache.compute(cache.key(inputs), lambda: profile_task.fn(**inputs))
