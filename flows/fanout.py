"""The flow's fanned-out passes after the statistics: holdout verification and the GPU profile
on the run's task runner (:class:`tasks.runners.FanOut`: threads, Dask, or one Dask worker per
GPU), reduced in order so that neither the runner nor the grouping changes a result (issue 18).

The DAG only: which task runs on what, and in which order the results are merged; the merging
itself is library code (:func:`fp16guard.verify.compare.merge_comparisons`,
:func:`fp16guard.backends.profile_parts.merge_profiles`).
"""

from __future__ import annotations

from prefect import get_run_logger

from fp16guard.settings import RunParameters
from tasks.runners import FanOut

__all__ = ["holdout_groups", "profile_pass", "verification_pass"]

#: Keys of a report that the comparison decides (merged); the backend's others come from a group.
_COMPARISON_KEYS = frozenset({"passed", "reason", "outputs", "samples", "shards", "tolerances", "suggested_gates"})


def holdout_groups(params: RunParameters, holdout: list[dict], fan: FanOut) -> list[list[int]]:
    """Consecutive groups of holdout shards, sized like the statistics' groups (samples / bytes
    per group, at least one group per worker); one group when the gate cannot be split (a
    custom metric whose accumulator has no ``merge``)."""
    from fp16guard.verify.compare import splittable
    from tasks.stats import shard_groups_task

    if len(holdout) <= 1 or not splittable(params.verify):
        return [list(range(len(holdout)))]
    execution = params.execution
    return shard_groups_task(params.model, [h["shard"] for h in holdout], execution.group_samples, execution.group_bytes, max(1, fan.workers))


def verification_pass(
    fan: FanOut,
    store_url: str,
    params: RunParameters,
    model_sha256: str,
    artifact_path: str,
    artifact_sha256: str,
    holdout: list[dict],
    code: str,
    providers: list[str],
    backend: str,
) -> dict:
    """The artifact against FP32 on every holdout shard: ``verification.json``'s content.

    Cached as a whole under :func:`tasks.verify.verify_task`'s key (model, artifact and holdout
    digests, settings, code, providers, backend), computed once under that entry's lock. On a
    miss the holdout goes in groups (:func:`holdout_groups`) to
    :func:`tasks.verify.verify_group_task` on ``fan``'s runner; the groups' per-shard parts are
    merged in shard order (:func:`fp16guard.verify.compare.merge_comparisons`), so the verdict
    and every figure are those of one pass, whatever the runner, workers and grouping. The
    backend's own fields (``execution``, ``providers``, fallback nodes, placement) come from the
    first group; a group that ran differently is named in ``execution``.
    """
    from tasks.caching import TaskCache
    from tasks.verify import VERIFY_CACHE_EXCLUDE, verify_task

    cache = TaskCache(store_url, "verify", verify_task, VERIFY_CACHE_EXCLUDE)
    key = cache.key({
        "model_sha256": model_sha256, "artifact_sha256": artifact_sha256, "holdout_sha256": [h["sha256"] for h in holdout],
        "settings": params.verify, "code": code, "providers": providers, "backend": backend,
    })
    return cache.compute(key, lambda: _verify_groups(fan, params, artifact_path, holdout, providers, backend))


def _verify_groups(fan: FanOut, params: RunParameters, artifact_path: str, holdout: list[dict], providers: list[str], backend: str) -> dict:
    from fp16guard.verify.compare import merge_comparisons
    from tasks.verify import verify_group_task

    groups = holdout_groups(params, holdout, fan)
    shards = [h["shard"] for h in holdout]
    get_run_logger().info("verification: %d holdout shards in %d groups; %s", len(shards), len(groups), fan.describe())
    futures = [
        fan.runner.submit(
            verify_group_task,
            parameters={
                "model_path": params.model, "artifact_path": artifact_path, "holdout": [shards[i] for i in group],
                "settings": params.verify, "batch_size": params.batch_size, "providers": providers, "backend": backend,
                "label": f"holdout {group[0] + 1}-{group[-1] + 1} of {len(shards)}",
            },
        )
        for group in groups
    ]
    parts = [future.result() for future in futures]  # in holdout order: the first error raised is a single pass's
    if len(parts) == 1:
        return parts[0]["report"]
    merged = merge_comparisons([p["comparison"] for p in parts], params.verify)
    first = parts[0]["report"]
    for name, value in first.items():
        if name not in _COMPARISON_KEYS:
            merged.setdefault(name, value)  # execution, emulated, providers, cpu_fallback_nodes, placement
    other = sorted({p["report"].get("execution") for p in parts[1:]} - {first.get("execution")}, key=str)
    if other:
        merged["execution"] = f"{first.get('execution')}; other holdout groups: {'; '.join(map(str, other))}"
        merged["emulated"] = any(bool(p["report"].get("emulated")) for p in parts)
    return merged


def profile_pass(
    fan: FanOut,
    store_url: str,
    params: RunParameters,
    backend: str,
    providers: list[str],
    device: str,
    model_sha256: str,
    artifact_path: str,
    artifact_sha256: str,
    sample: dict,
    code: str,
) -> dict:
    """Latency of FP32, the artifact and all-FP16 at each batch size: one
    :func:`tasks.profile.profile_batch_task` per batch (cached by :func:`tasks.profile.profile_task`'s
    key) on ``fan``'s runner, merged in batch order
    (:func:`fp16guard.backends.profile_parts.merge_profiles`). Batches are timed at once only
    where each worker has a GPU of its own (dask-cuda); otherwise one after another, so that no
    two timings share a device.
    """
    from fp16guard.backends.profile_parts import merge_profiles
    from tasks.profile import profile_batch_task, profile_batches_task

    batches = profile_batches_task(params.model, sample["shard"], params.profile_batches)
    at_once = fan.choice.device_per_worker
    futures, records = [], []
    for batch in batches:
        future = fan.runner.submit(
            profile_batch_task,
            parameters={
                "store_url": store_url, "backend": backend, "providers": providers, "device": device, "model_path": params.model,
                "model_sha256": model_sha256, "artifact_path": artifact_path, "artifact_sha256": artifact_sha256,
                "sample": sample["shard"], "sample_sha256": sample["sha256"], "batch": batch, "code": code,
            },
        )
        if at_once:
            futures.append(future)
        else:
            records.append(future.result())
    records.extend(f.result() for f in futures)
    return merge_profiles(records)
