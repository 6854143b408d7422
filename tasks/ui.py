"""What the Prefect UI shows of a run: artifacts (summary, tensor table, report link) and an
asset materialization for a released artifact (docs/FACTS.md #13: the open-source server stores asset
events but draws no lineage graph; the lineage lives in manifest.json)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.assets import Asset, materialize

from fp16guard.report.summary import artifact_key, summary_markdown, tensors_near_limit


@task(name="publish-ui-artifacts")
def publish_ui_task(store_url: str, name: str, version: str, result: dict, plan: dict, verification: dict) -> list[str]:
    """Create the run's markdown summary, its table of tensors nearest the FP16 limit, and a
    link to ``report.html``, under keys derived from name and version.

    Returns:
        The artifact keys written.
    """
    import io

    import pyarrow.parquet as pq

    from fp16guard.store.runs import open_store

    stats = pq.read_table(io.BytesIO(open_store(store_url).read_bytes(name, version, result["run_id"], "stats.parquet")))
    fp32 = {n["name"] for n in plan.get("fp32_nodes", [])}
    keys = [artifact_key(name, version, k) for k in ("summary", "tensors", "report")]
    create_markdown_artifact(summary_markdown(name, version, result, plan, verification, stats), key=keys[0], description=f"fp16guard run of {name} {version}")
    create_table_artifact(tensors_near_limit(stats, plan["threshold"], fp32), key=keys[1], description="tensors nearest or above the FP16 limit")
    create_link_artifact(_as_url(result["report"]), link_text=f"report.html of {name} {version}", key=keys[2])
    return keys


@materialize("fp16guard://released-artifact")
def _materialize(run_dir: str) -> str:
    return run_dir


def emit_release_asset(artifact_url: str, model_location: str, shard_locations: list[str], run_dir: str) -> None:
    """Record the released artifact as a Prefect asset materialization, with the model and the
    calibration data as upstream dependencies (at most 50, to keep the event small)."""
    deps = [_as_url(model_location)] + sorted({_as_url(s.split("#")[0]) for s in shard_locations})[:50]
    _materialize.with_options(assets=[Asset(key=_as_url(artifact_url))], asset_deps=deps)(run_dir)


def _as_url(location: str) -> str:
    """Asset keys and links need a URI: local paths become ``file://`` URLs."""
    from fp16guard.io.urls import as_uri

    return as_uri(location)
