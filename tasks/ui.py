"""What the Prefect UI shows of a run: artifacts (summary, tensor table, report link) and an
asset materialization for a released artifact (docs/FACTS.md #13: the open-source server stores asset
events but draws no lineage graph; the lineage lives in manifest.json)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.assets import Asset, materialize

from fp16guard.report.outcome import outcome_lines, report_link
from fp16guard.report.summary import artifact_key, summary_markdown, tensors_near_limit


@task(name="publish-ui-artifacts")
def publish_ui_task(store_url: str, name: str, version: str, result: dict, plan: dict, verification: dict) -> list[str]:
    """Log the run's outcome in fp16guard's words and create its UI artifacts, under keys
    derived from name and version: the markdown summary (verdict, figures, FP32 nodes and
    largest activations as tables, readable in the UI itself), the table of tensors nearest the
    FP16 limit, and the report: a presigned link for an object store whose file system can sign
    (:func:`fp16guard.report.outcome.report_link`), else a note saying where the file is.

    Side effects: four INFO lines in the flow run's log (plan, verification, release, artifacts).

    Returns:
        The artifact keys written.
    """
    import io

    import pyarrow.parquet as pq

    from fp16guard.store.runs import open_store

    logger = get_run_logger()
    for line in outcome_lines(name, version, result, plan, verification):
        logger.info(line)
    store = open_store(store_url)
    stats = pq.read_table(io.BytesIO(store.read_bytes(name, version, result["run_id"], "stats.parquet")))
    fp32 = {n["name"] for n in plan.get("fp32_nodes", [])}
    keys = [artifact_key(name, version, k) for k in ("summary", "tensors", "report")]
    create_markdown_artifact(summary_markdown(name, version, result, plan, verification, stats), key=keys[0], description=f"fp16guard run of {name} {version}")
    create_table_artifact(tensors_near_limit(stats, plan["threshold"], fp32), key=keys[1], description="tensors nearest or above the FP16 limit")
    url, note = report_link(store, name, version, result["run_id"])
    if url:
        create_link_artifact(url, link_text=f"report.html of {name} {version}", key=keys[2], description=note)
    else:
        create_markdown_artifact(f"**report.html** of {name} {version}: {note}. The summary artifact has the key tables.\n", key=keys[2], description="where the report is")
    logger.info(f"report: {url or note}")
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
