"""Tasks of the nightly flow: list releases, re-verify one, announce a regression."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task


@task(name="list-releases")
def list_releases_task(store_url: str, names: list[str]) -> list[dict]:
    """Current release of every model version in the store (optionally only ``names``).

    Returns:
        One ``{"name", "version", "run_id"}`` per released version, sorted.
    """
    from fp16guard.store.runs import open_store

    store = open_store(store_url)
    wanted = set(names)
    out = []
    for name in sorted(store.names()):
        if wanted and name not in wanted:
            continue
        for version in sorted(store.versions(name)):
            record = store.current_release(name, version)
            if record:
                out.append({"name": name, "version": version, "run_id": record["run_id"]})
    return out


# Not cached: the point is to re-run verification with today's data and today's runtime.
@task(name="reverify-release", task_run_name="reverify {release[name]}/{release[version]}", tags=["fp16guard-gpu"])
def reverify_release_task(store_url: str, release: dict, extra_holdout: list[str]) -> dict:
    """Verify a released artifact against the FP32 model on its holdout locations as they are now
    (folders may have grown) plus ``extra_holdout``, with the tolerances it was released under.

    The artifact is read through the store API (so S3 stores work) into a temporary folder.

    Returns:
        ``{"name", "version", "run_id", "passed", "reason", "holdout", "parameters", "samples"}``;
        ``passed`` is False with a reason when the FP32 model changed or vanished since release.
    """
    from fp16guard.errors import UserError
    from fp16guard.io.model import model_digest
    from fp16guard.io.shards import discover_shards
    from fp16guard.settings import VerifySettings
    from fp16guard.store.runs import open_store
    from fp16guard.backends.registry import get_backend, released_artifact

    store = open_store(store_url)
    name, version, run_id = release["name"], release["version"], release["run_id"]
    manifest = store.read_json(name, version, run_id, "manifest.json")
    params = manifest["parameters"]
    holdout = list(params["holdout"]) + [h for h in extra_holdout if h not in params["holdout"]]
    result = {"name": name, "version": version, "run_id": run_id, "holdout": holdout, "parameters": params, "samples": 0}
    model = manifest["inputs"]["model"]
    try:
        if model_digest(model["location"]) != model["sha256"]:
            return {**result, "passed": False, "reason": f"FP32 model {model['location']} changed since the release (sha256 differs)"}
        # The backend it was built with, on today's runtime (providers "auto" unless the run named some).
        record = manifest.get("backend") or {}
        backend = get_backend(record.get("name"), params.get("providers"))
        released = released_artifact(record)
        settings = VerifySettings(**params.get("verify", {}))
        shards = discover_shards(holdout, "holdout")
        with tempfile.TemporaryDirectory(prefix="fp16guard-nightly-") as tmp:
            # The artifact and any weights file beside it (models past 2 GB).
            for rel in store.run_status(name, version, run_id).get("files", {}):
                if rel == released or rel == f"{released}.data":
                    (Path(tmp) / rel).write_bytes(store.read_bytes(name, version, run_id, rel))
            artifact = Path(tmp) / released
            report = backend.verify(model["location"], artifact, shards, settings, batch_size=params.get("batch_size"))
    except UserError as exc:
        return {**result, "passed": False, "reason": f"cannot re-verify: {exc}"}
    return {**result, "passed": bool(report["passed"]), "reason": report.get("reason"), "samples": report.get("samples", 0)}


@task(name="emit-regression")
def emit_regression_task(check: dict, recalibration: str | None) -> str | None:
    """Emit ``fp16guard.release.regressed`` for a failed re-verification; returns the event id."""
    from prefect.events import emit_event

    from fp16guard.events import regression_event

    spec = regression_event(check["name"], check["version"], check["run_id"], check["reason"] or "verification failed", check["holdout"], recalibration)
    event = emit_event(spec.event, resource=spec.resource, payload=spec.payload, related=spec.related)
    return str(event.id) if event else None
