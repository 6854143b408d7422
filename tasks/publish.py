"""Tasks that stage a run in the store, write its records, and publish it (release gate)."""

from __future__ import annotations

from pathlib import Path
from prefect import task

from fp16guard.io import atomic
from fp16guard.records import Manifest, VerificationReport, write_json
from fp16guard.settings import RunParameters
from tasks.inputs import calib_records, holdout_overlap


@task(name="stage-run")
def stage_run_task(store_url: str, name: str, version: str) -> dict:
    """Reserve a run id and a local staging folder; nothing is visible in the store yet.

    Returns:
        ``{"store", "name", "version", "run_id", "dir"}`` (``dir``: the local folder every
        later task writes its files into).
    """
    from fp16guard.store.runs import open_store

    staged = open_store(store_url).stage_run(name, version)
    return {"store": store_url, "name": name, "version": version, "run_id": staged.run_id, "dir": str(staged.path)}


def discard_run(staged: dict) -> None:
    """Remove a staged run's folder (bad input or a crash before publishing): the store is left
    as if the run never started (``.staging/`` too when no other run uses it). Not a task: it
    must run even when the flow is failing."""
    from fp16guard.store.runs import remove_staging

    remove_staging(staged["dir"])


@task(name="write-verification")
def write_verification_task(verification: dict, out_dir: str) -> str:
    """Write ``verification.json`` (atomically, strict JSON, through its typed record) and
    return its path."""
    return str(write_json(Path(out_dir) / "verification.json", VerificationReport.from_dict(verification)))


@task(name="publish-run")
def publish_run_task(
    store_url: str,
    staged: dict,
    params: RunParameters,
    context: dict,
    model: dict,
    shard_results: list[dict],
    calib: list[dict],
    holdout: list[dict],
    plan: dict,
    verification: dict,
    backend: dict | None,
    profile: dict | None = None,
) -> dict:
    """Write ``report.html`` and ``manifest.json``, commit the run, and apply the release gate.

    A verified run is released when it is the version's first verified run, or when
    ``params.promote`` is set, unless the release settings (``params.release``: minimum FP16 share
    of FLOPs, minimum GPU speed-up) refuse it: it then stays verified, not released, with the
    refusal as its status reason. A rejected run is kept and marked rejected.

    Returns:
        ``{"run_id", "run_dir", "passed", "status", "released", "release_reason", "reason",
        "headline", "independent", "fp32_nodes", "nodes_total", "fp16_share", "speed_verdict", "release_gate",
        "worst_rel_error", "speed", "repair", "repair_summary", "report"}`` (``headline``: the verdict's
        first line, :func:`fp16guard.report.verdict.headline`, which ends with ``(not independent: ...)``
        when the holdout overlaps the calibration data; ``independent``: False then; ``fp16_share``:
        :meth:`fp16guard.plan.cost.FP16Share.to_dict`, None when not estimated; ``speed_verdict``:
        :func:`fp16guard.report.verdict.speed_verdict`; ``release_gate``:
        :meth:`fp16guard.store.gate.GateDecision.to_dict`, None for a rejected run; ``speed``:
        the profile's one-line summary, see :func:`fp16guard.backends.profile.speed_summary`;
        ``repair``: the repair outcome such as ``repaired``, None when repair did not run;
        ``repair_summary``: :func:`fp16guard.report.plan_summary.repair_line`); ``worst_rel_error`` as
        :func:`fp16guard.records.worst_rel_error` defines it (``inf`` when an output is NaN/inf).
    """
    from fp16guard.backends.profile import speed_summary
    from fp16guard.report.plan_summary import plan_summary, repair_line
    from fp16guard.report.verdict import headline, speed_verdict
    from fp16guard.store.gate import release_gate
    from fp16guard.store.lineage import build_manifest, file_record, output_records
    from fp16guard.store.runs import StagedRun, open_store

    out = Path(staged["dir"])
    record = VerificationReport.from_dict(verification)
    passed = record.passed
    share = fp16_share_record(params.model, plan, calib[0]["shard"] if calib else None)
    speed = speed_verdict(profile)
    gate = release_gate(share, speed, params.release.min_fp16_share, params.release.min_speedup)
    # A holdout that overlaps the calibration data (allowed with --allow-overlap) is said in the
    # verdict's first line, so every view of the run says it.
    independent = not holdout_overlap(calib, holdout)
    verdict = headline(passed, verification.get("reason"), share, speed, independent=independent)
    calibration = [
        {**rec, "computed_by": r["computed_by"], "computed_at": r["computed_at"]} for rec, r in zip(calib_records(calib), shard_results)
    ]
    manifest = Manifest.from_dict({**build_manifest(
        run_id=staged["run_id"],
        name=params.name,
        version=params.version,
        status="verified" if passed else "rejected",
        reason=verification.get("reason"),
        parameters=params.model_dump(mode="json"),
        model={k: model[k] for k in ("location", "sha256", "bytes")},
        calibration=calibration,
        holdout=calib_records(holdout),
        outputs=output_records(out),
        flow_run=context["flow_run"],
        trigger=context["trigger"],
        backend=backend,
        providers=verification.get("providers"),
    ), "profile": profile,  # latency record (fp16guard.backends.profile), None when not profiled
        "plan": plan_summary(plan),  # how the FP32 set was found: strategy, reasons, repair, folding
        "verdict": verdict, "fp16_share": share, "speed": speed,
        "release_gate": gate.to_dict() if passed else None})
    # The report shows the lineage, so it is rendered from the manifest; its own hash is then
    # added to the manifest's outputs (and status.json records every file as well).
    write_report(out, plan, record.to_dict(), manifest.to_dict())
    manifest.add_output("report.html", file_record(out / "report.html"))
    write_json(out / "manifest.json", manifest)

    store = open_store(store_url)
    run = StagedRun(store, staged["name"], staged["version"], staged["run_id"], out)
    # A verified run the release gate refuses stays verified, unreleased, with the refusal as its note.
    ref = run.commit(verified=passed, reason=verification.get("reason") or (gate.refused if passed else None) or "")
    released, release_reason = False, "not verified: nothing released"
    if passed and gate.refused:
        release_reason = gate.refused
    elif passed:
        decision = store.release(params.name, params.version, ref.run_id, promote=params.promote)
        released, release_reason = decision.released, decision.reason
    if passed and gate.notes:
        release_reason = "; ".join([release_reason, *gate.notes])
    return {
        "run_id": ref.run_id,
        "run_dir": ref.url,
        "passed": passed,
        "status": ref.status,
        "released": released,
        "release_reason": release_reason,
        "reason": verification.get("reason"),
        "headline": verdict,
        "independent": independent,
        "fp32_nodes": len(plan.get("fp32_nodes", [])),
        "nodes_total": (plan.get("counts") or {}).get("nodes") or (share or {}).get("nodes_total"),
        "fp16_share": share,
        "speed_verdict": speed,
        "release_gate": gate.to_dict() if passed else None,
        "worst_rel_error": record.worst_rel_error,
        "speed": speed_summary(profile),
        "repair": (plan.get("repair") or {}).get("outcome"),
        "repair_summary": repair_line(plan),
        "report": f"{ref.url}/report.html",
    }


def fp16_share_record(model_path: str, plan: dict, sample) -> dict | None:
    """The run's FP16 share (:func:`fp16guard.plan.cost.share_for_run` at ``sample``'s shapes,
    the plan's FP32 nodes) as a record, or None when the cost model cannot read the model: the
    share is an estimate and never fails a run."""
    from fp16guard.plan.cost import share_for_run

    names = [n["name"] if isinstance(n, dict) else str(n) for n in plan.get("fp32_nodes", [])]
    try:
        return share_for_run(model_path, names, sample).to_dict()
    except Exception:  # noqa: BLE001 - an estimate: the verdict then says nothing of the share
        return None


def write_report(out: Path, plan: dict, verification: dict, manifest: dict) -> None:
    """Render ``report.html`` from the run's statistics, plan, verification and manifest."""
    from fp16guard.report.html import render_report
    from fp16guard.stats.schema import read_stats

    html = render_report(read_stats(out / "stats.parquet"), plan, verification, manifest)
    atomic.write_text(out / "report.html", html)

