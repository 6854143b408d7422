"""Profile task: latency of FP32, the artifact and the all-FP16 build on the worker's runtime."""

from __future__ import annotations

from prefect import task

from fp16guard.io.shards import ShardRef

#: Library modules whose code determines a profile (part of its cache key).
PROFILE_MODULES = ("fp16guard.backends.profile", "fp16guard.backends.onnxruntime", "fp16guard.runners.onnxrt", "fp16guard.graph.convert")


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
    dynamic), on ``providers``; see :func:`fp16guard.backends.profile.profile_artifact`.

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
