"""Per-shard statistics (cached by content) and their reduction into Parquet."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from fp16guard.io.shards import ShardRef

#: Library modules whose code determines a shard's statistics (part of the cache key).
STATS_MODULES = ("fp16guard.graph.instrument", "fp16guard.stats.collect", "fp16guard.io.lazy_weights", "fp16guard.io.shards", "fp16guard.io.model")
#: Arguments of :func:`shard_stats_task` left out of its cache key (they do not change the result).
STATS_CACHE_EXCLUDE = ["model_path", "shard", "batch_size", "providers"]


@task(name="shard-stats", task_run_name="stats {shard.name}", tags=["fp16guard-gpu"])
def shard_stats_task(
    model_path: str,
    model_sha256: str,
    shard: ShardRef,
    shard_sha256: str,
    code: str,
    batch_size: int | None = None,
    providers: list[str] | None = None,
) -> dict:
    """Max |x| and non-finite counts of every float tensor over one calibration shard.

    Cached on ``model_sha256``, ``shard_sha256`` and ``code`` (digest of the library code) only:
    paths, batch size and providers do not change the statistics.

    Returns:
        ``{"shard", "sha256", "table" (pyarrow, SHARD_SCHEMA), "computed_by" (flow run id),
        "computed_at" (UTC ISO time)}``. A cached result keeps the run that computed it.
    """
    from fp16guard.stats.collect import shard_stats

    table = shard_stats(model_path, shard, batch_size=batch_size, providers=providers)
    return {
        "shard": shard.name,
        "sha256": shard_sha256,
        "table": table,
        "computed_by": flow_run.get_id(),
        "computed_at": datetime.now(timezone.utc).isoformat(),
    }


@task(name="shard-groups")
def shard_groups_task(model_path: str, shards: list[ShardRef], group_samples: int | None = None, group_bytes: int | None = None, min_groups: int = 1) -> list[list[int]]:
    """Split the calibration shards into groups for :func:`shard_group_stats_task`
    (:func:`fp16guard.stats.groups.plan_groups`; sizes from array headers, nothing loaded: one
    header per distinct file size, :func:`~fp16guard.stats.groups.shard_sizes`).

    Returns:
        Lists of indices into ``shards``, in order.
    """
    from fp16guard.io.lazy_weights import load_graph_only
    from fp16guard.io.model import input_specs, normalize_model
    from fp16guard.stats.groups import plan_groups, shard_sizes

    try:
        specs = input_specs(normalize_model(load_graph_only(model_path)))
    except Exception:  # noqa: BLE001 — the statistics task reports a bad model in full
        specs = None
    return plan_groups(shard_sizes(shards, specs), group_samples, group_bytes, min_groups)


@task(name="shard-group-stats", task_run_name="stats {label}", tags=["fp16guard-gpu"], cache_policy=NO_CACHE, persist_result=False)
def shard_group_stats_task(
    store_url: str,
    model_path: str,
    model_sha256: str,
    shards: list[ShardRef],
    shard_sha256: list[str],
    code: str,
    batch_size: int | None = None,
    providers: list[str] | None = None,
    label: str = "",
    progress: str | None = None,
    threads: int = 0,
) -> list[dict]:
    """Statistics of a group of shards with one onnxruntime session, each shard cached on its own.

    Each shard is looked up in the ``stats`` cache by the key :func:`shard_stats_task` would use
    (:class:`tasks.caching.TaskCache`: model and shard content digests, ``code``, the task's
    source), so entries are shared with that task and across groupings; only the misses are
    measured, one after another in one :class:`~fp16guard.stats.collect.StatsSession` (opened
    only when something is missing), under one lease lock for the group's misses, each written
    back to the cache as soon as it is measured (:mod:`tasks.shard_cache`: entry by entry through
    Prefect's result store cost ~10 ms per shard).

    Args:
        store_url: the store whose ``.cache/stats`` holds the entries.
        progress: a :func:`fp16guard.progress.report` channel; each finished shard is reported
            to it when the flow listens in this process (threads), else the flow counts the group
            when it returns (other processes, e.g. Dask workers).
        threads: kept for callers; statistics sessions always run on
            :data:`fp16guard.stats.collect.STATS_THREADS` (one) thread, so that figures do not
            depend on the parallelism (onnxruntime's Log/Softplus kernels differ in the last bit
            by thread count).

    Returns:
        One dict per shard, in order, as :func:`shard_stats_task` returns it, plus
        ``"reported"`` (the shard was counted on ``progress`` already) and ``"cached"``.
    """
    from fp16guard.progress import report
    from fp16guard.stats.collect import StatsSession
    from tasks.shard_cache import entries_for

    if len(shards) != len(shard_sha256):
        raise ValueError(f"{len(shards)} shards but {len(shard_sha256)} digests")
    entries = entries_for(store_url, "stats", shard_stats_task, STATS_CACHE_EXCLUDE)
    keys = [entries.key({"model_sha256": model_sha256, "shard_sha256": digest, "code": code}) for digest in shard_sha256]
    results: list[dict | None] = [None] * len(shards)

    def take(i: int, value: dict, cached: bool) -> None:
        results[i] = {**value, "shard": shards[i].name, "cached": cached, "reported": report(progress, shards[i].name)}

    for i, key in enumerate(keys):
        found, value = entries.get(key)
        if found:
            take(i, value, True)
    missing = [i for i, r in enumerate(results) if r is None]
    if not missing:
        return results  # type: ignore[return-value]
    if not entries.local:  # object store: each entry under its own lock, through Prefect's result store
        return _measure_each(entries.cache, results, missing, keys, shards, shard_sha256, model_path, batch_size, providers, threads, take)
    run_id = flow_run.get_id()
    # One lease for the group's misses; entries another run wrote meanwhile are taken, not redone.
    with entries.locked([keys[i] for i in missing]):
        for i in missing:
            found, value = entries.get(keys[i])
            if found:
                take(i, value, True)
        todo = [i for i in missing if results[i] is None]
        if todo:
            with StatsSession(model_path, batch_size=batch_size, providers=providers, intra_op_threads=threads) as session:
                for i in todo:
                    value = {
                        "shard": shards[i].name,
                        "sha256": shard_sha256[i],
                        "table": session.run(shards[i]),
                        "computed_by": run_id,
                        "computed_at": datetime.now(timezone.utc).isoformat(),
                    }
                    entries.put(keys[i], value)  # at once: a run killed later keeps what it finished
                    take(i, value, False)
    return results  # type: ignore[return-value]


def _measure_each(cache, results, missing, keys, shards, shard_sha256, model_path, batch_size, providers, threads, take) -> list[dict]:
    """The per-entry path (a remote store): each missing shard computed under its own lock and
    written through Prefect's result store (:meth:`tasks.caching.TaskCache.compute`), in one
    session opened for the group."""
    from fp16guard.stats.collect import StatsSession

    with StatsSession(model_path, batch_size=batch_size, providers=providers, intra_op_threads=threads) as session:
        for i in missing:

            def measure(i=i) -> dict:
                return {
                    "shard": shards[i].name,
                    "sha256": shard_sha256[i],
                    "table": session.run(shards[i]),
                    "computed_by": flow_run.get_id(),
                    "computed_at": datetime.now(timezone.utc).isoformat(),
                }

            take(i, cache.compute(keys[i], measure), False)
    return results


@task(name="reduce-stats")
def reduce_stats_task(shard_results: list[dict], out_dir: str) -> dict:
    """Reduce per-shard tables into ``stats.parquet`` and ``shard_stats.parquet`` in ``out_dir``.

    Shard names are re-stamped from this run's inputs (a cached table may carry the name the
    shard had when it was computed).

    Side effects:
        Writes both Parquet files atomically.

    Returns:
        ``{"stats": path, "shard_stats": path}``.
    """
    import pyarrow as pa

    from fp16guard.stats.collect import write_stats_files

    tables = []
    for result in shard_results:
        table = result["table"]
        idx = table.schema.get_field_index("shard")
        table = table.set_column(idx, table.schema.field(idx), pa.array([result["shard"]] * table.num_rows, pa.string()))
        tables.append(table)
    out = Path(out_dir)
    write_stats_files(tables, out / "stats.parquet", out / "shard_stats.parquet")
    return {"stats": str(out / "stats.parquet"), "shard_stats": str(out / "shard_stats.parquet")}
