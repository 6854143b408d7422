"""Per-shard statistics (cached by content) and their reduction into Parquet."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from prefect.runtime import flow_run

from fp16guard.io.shards import ShardRef

#: Library modules whose code determines a shard's statistics (part of the cache key).
STATS_MODULES = ("fp16guard.graph.instrument", "fp16guard.stats.collect", "fp16guard.io.lazy_weights", "fp16guard.io.shards", "fp16guard.io.model")


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
