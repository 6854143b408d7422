"""The nightly flow: re-verify every released artifact, re-calibrate the ones that regressed.

Why nightly: a release was verified once, on the holdout data of that day with that day's
runtime. Holdout folders grow as new production data is sampled into them, and onnxruntime /
driver upgrades change kernels; either can expose an overflow the release never saw. Each night,
every current release (``<store>/<name>/<version>/release.json``) is verified again — against the
FP32 model, on its holdout locations as they are now plus any newer holdout given, with the
tolerances it was released under. A release that fails:

1. emits ``fp16guard.release.regressed`` (contract in ``fp16guard.events``) — automations can
   page someone or open a ticket;
2. is re-calibrated (``recalibrate``, default on): the calibrate flow runs as a subflow with the
   release's parameters, the newest calibration data added (``calib``; the new holdout data is
   never used to calibrate, or verification would prove nothing), and the extended holdout. Shard
   statistics are cached by content, so only new shards cost inference. The new run is stored; it
   replaces the release only with ``promote`` (default off: a person promotes it).

The subflow runs in the same process, on the same worker and GPU: with one flow run per worker
(``--limit 1``, docs/DEPLOYMENT.md), ``run_deployment`` would wait for a slot this run holds.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fp16guard.settings import check_segment


class NightlyParameters(BaseModel):
    """Parameters of the nightly re-verification (the form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid")

    store: str | None = Field(None, description="Store root (folder or fsspec URL). Default: $FP16GUARD_STORE, else ./fp16guard-store.")
    names: list[str] = Field(default_factory=list, description="Only these model names; empty: every model in the store.")
    holdout: dict[str, list[str]] = Field(
        default_factory=dict, description="Newest holdout data per model name, checked on top of each release's own holdout locations."
    )
    calib: dict[str, list[str]] = Field(
        default_factory=dict, description="Newest calibration data per model name, added to the release's calibration data when re-calibrating."
    )
    recalibrate: bool = Field(True, description="Re-calibrate a release that no longer passes (a new run of the same version).")
    promote: bool = Field(False, description="Release a re-calibrated run that verifies, replacing the regressed release.")

    @field_validator("names", "holdout", "calib")
    @classmethod
    def _safe_names(cls, value):
        for name in value:
            check_segment(name, "name")
        return value


@flow(name="fp16guard-nightly", validate_parameters=True)
def nightly(params: NightlyParameters = NightlyParameters()) -> dict:
    """Re-verify every release; report, announce and re-calibrate the regressed ones.

    Returns:
        ``{"store", "checked", "regressed": [{"name", "version", "run_id", "reason",
        "event_id", "recalibration"}]}``; ``recalibration`` is the new run's result (or its
        error) when re-calibrated.
    """
    from prefect.artifacts import create_table_artifact

    from fp16guard.store.runs import open_store
    from tasks.releases import emit_regression_task, list_releases_task, reverify_release_task

    log = get_run_logger()
    store_url = open_store(params.store).url
    releases = list_releases_task(store_url, params.names)
    log.info("re-verifying %d released artifacts in %s", len(releases), store_url)
    checks = [reverify_release_task(store_url, r, params.holdout.get(r["name"], [])) for r in releases]
    regressed = []
    for check in (c for c in checks if not c["passed"]):
        log.warning("%s/%s release %s regressed: %s", check["name"], check["version"], check["run_id"], check["reason"])
        recal = _recalibrate(check, params, store_url) if params.recalibrate else None
        event_id = emit_regression_task(check, (recal or {}).get("flow_run_id"))
        regressed.append({k: check[k] for k in ("name", "version", "run_id", "reason")} | {"event_id": event_id, "recalibration": recal})
    create_table_artifact(
        key="fp16guard-nightly",
        table=[
            {"model": f"{c['name']}/{c['version']}", "release": c["run_id"], "passed": c["passed"], "samples": c["samples"], "reason": c["reason"] or ""}
            for c in checks
        ],
        description=f"Nightly re-verification of {len(checks)} releases in {store_url}: {len(regressed)} regressed.",
    )
    return {"store": store_url, "checked": len(checks), "regressed": regressed}


def _recalibrate(check: dict, params: NightlyParameters, store_url: str) -> dict:
    """Run the calibrate flow as a subflow for a regressed release; never raises."""
    from prefect.runtime import flow_run

    from flows.calibrate import calibrate
    from fp16guard.settings import RunParameters

    old = dict(check["parameters"])
    new_calib = [c for c in params.calib.get(check["name"], []) if c not in old["calib"]]
    run = RunParameters(
        **{
            **old,
            "store": store_url,
            "calib": old["calib"] + new_calib,
            "holdout": check["holdout"],
            "promote": params.promote,
            "trigger_event": {"event": "fp16guard.nightly.regression", "release_run_id": check["run_id"], "flow_run": flow_run.get_id()},
        }
    )
    # return_state: a failed re-calibration (VerificationFailed, bad data) is reported, and the
    # nightly goes on with the other releases.
    state = calibrate(run, return_state=True)
    out = {"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value}
    try:
        out.update(state.result())
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out
