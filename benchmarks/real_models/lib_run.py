"""One real model through fp16guard's library calls, without Prefect (:func:`run_model`), and the
cells of its table row (:func:`row_cells`).

The steps, what is recorded and why are described in ``benchmarks/real_models_lib.py``
(``python -m benchmarks real_models_lib``), the command line, table and result files that call
this module; ``stability``, ``autocast_compare``, ``final_table`` and ``repair_parallel`` use it too.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.real_models.models import MODELS, RealModel  # noqa: E402
from benchmarks.real_models.run import prepare  # noqa: E402
from benchmarks.real_models import flops as _flops  # noqa: E402,F401  (imported before --code moves sys.path)

__all__ = ["ALL", "row_cells", "run_model", "spec_by_name", "worst_error"]


def _all_models() -> list[RealModel]:
    try:
        from benchmarks.real_models.more_models import MORE
    except ImportError:
        MORE = []
    return list(MODELS) + list(MORE)


ALL: list[RealModel] = _all_models()


def spec_by_name(name: str) -> RealModel:
    for m in ALL:
        if m.name == name:
            return m
    raise KeyError(name)


def _gate_text(verify_settings) -> str:
    """One line naming the gate the run judged by (the default: numeric)."""
    d = verify_settings.model_dump() if hasattr(verify_settings, "model_dump") else dict(verify_settings)
    text = f"numeric: max rel. error ≤ {d.get('max_rel_error')}, cosine ≥ {d.get('min_cosine')}"
    gates = d.get("output_gates") or {}
    if gates:
        text += "; " + ", ".join(f"{k}: {v.get('gate') if isinstance(v, dict) else v}" for k, v in gates.items())
    return text


def worst_error(report: dict) -> dict:
    """The worst output's figure: ``{"value": float|None, "text": str, "nonfinite": int}``.

    A candidate output with NaN/inf is reported as non-finite (``value`` None), never as a number.
    """
    outs = {k: v for k, v in (report.get("outputs") or {}).items() if isinstance(v, dict)}
    nonfinite = sum(int(o.get("nonfinite") or 0) for o in outs.values())
    rels = []
    for o in outs.values():
        if o.get("kind") == "exact":
            continue
        r = o.get("max_rel_error")
        if r is None or (isinstance(r, float) and not math.isfinite(r)):
            nonfinite = max(nonfinite, 1)
        else:
            rels.append(float(r))
    if nonfinite:
        return {"value": None, "text": f"non-finite ({nonfinite} NaN/inf values)", "nonfinite": nonfinite}
    if not rels:
        mism = [o.get("mismatch_fraction") for o in outs.values() if o.get("kind") == "exact"]
        return {"value": 0.0, "text": f"exact outputs, mismatch {max(mism) if mism else 0:.3g}", "nonfinite": 0}
    v = max(rels)
    return {"value": v, "text": f"{v:.3g}", "nonfinite": 0}


def _outputs_brief(report: dict) -> dict:
    keep = ("kind", "max_rel_error", "cosine", "nonfinite", "passed", "gate", "mismatch_fraction")
    out = {}
    for k, v in (report.get("outputs") or {}).items():
        if isinstance(v, dict):
            b = {x: v.get(x) for x in keep if x in v}
            checks = v.get("checks")
            if isinstance(checks, dict):
                b.update({f"checks.{x}": checks.get(x) for x in ("top1_agreement", "threshold_iou") if checks.get(x) is not None})
            out[k] = b
    return out


def _search_record(plan: dict) -> dict:
    """The plan's repair/search record, with the number of checks it ran."""
    rec: dict = {}
    for key in ("repair", "search", "shrink", "stability"):
        if isinstance(plan.get(key), dict):
            rec[key] = plan[key]
    rep = rec.get("repair") or {}
    steps = rep.get("steps") or []
    checks = rep.get("checks")
    if checks is None:
        checks = len(steps)
    search = rec.get("search") or {}
    if isinstance(search, dict) and search.get("steps") is not None and isinstance(search.get("steps"), list):
        checks = max(checks if isinstance(checks, int) else 0, len(search["steps"]))
    phases: dict[str, int] = {}
    for s in steps:
        if isinstance(s, dict) and s.get("phase"):
            phases[s["phase"]] = phases.get(s["phase"], 0) + 1
    rec["summary"] = {"outcome": rep.get("outcome") or search.get("outcome"), "checks": checks, "message": rep.get("message") or search.get("message"),
                      "trail": [s.get("fp32_nodes") for s in steps if isinstance(s, dict)], "phases": phases,
                      "stability": rep.get("stability"), "fp32_flops_share": rep.get("fp32_flops_share")}
    return rec


def _fp32_names(plan: dict) -> list[str]:
    return [n["name"] if isinstance(n, dict) else str(n) for n in plan.get("fp32_nodes", [])]


def _reason_counts(plan: dict) -> dict:
    counts: dict[str, int] = {}
    for n in plan.get("fp32_nodes", []):
        if isinstance(n, dict):
            counts[n.get("reason", "?")] = counts.get(n.get("reason", "?"), 0) + 1
    return counts


def run_model(
    spec: RealModel,
    cache: Path,
    out_dir: Path,
    seed: int = 0,
    calib_refs: Sequence | None = None,
    all_fp16: bool = True,
    plan_settings=None,
    verify_settings=None,
    log=print,
) -> dict:
    """Statistics → plan (+ repair) → build → holdout verification of one model, by library calls.

    Args:
        spec: the model.
        cache: the real-models cache (packages, data).
        out_dir: where this model's files go (stats, plan, artifact, all-FP16 build, verification).
        seed: data seed (``prepare``).
        calib_refs: calibration shards to use instead of the model's own (stability subsets).
        all_fp16: also verify the all-FP16 build.

    Returns:
        The record (JSON-able).
    """
    import onnx

    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model, save_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.settings import PlanSettings, VerifySettings
    from fp16guard.stats.collect import StatsSession, write_stats_files
    from fp16guard.verify.compare import verify
    from tasks.build import build_mixed_onnx_task
    from tasks.plan import plan_task

    from benchmarks.real_models.flops import artifact_share, tool_share

    plan_settings = plan_settings or PlanSettings()
    verify_settings = verify_settings or VerifySettings()
    rec: dict = {"name": spec.name, "kind": spec.kind, "package": spec.package, "version": spec.version, "member": spec.member, "inputs": spec.inputs,
                 "gate": _gate_text(verify_settings)}
    secs: dict = {}
    t_all = time.monotonic()
    t = time.monotonic()
    model_path, calib_dir, holdout_dir = prepare(spec, cache, seed)
    secs["data"] = round(time.monotonic() - t, 2)
    calib = list(calib_refs) if calib_refs is not None else discover_shards([str(calib_dir)], "calibration")
    holdout = discover_shards([str(holdout_dir)], "holdout")
    rec["model_path"] = str(model_path)
    rec["calib_shards"] = [Path(c.path).name for c in calib]
    out_dir.mkdir(parents=True, exist_ok=True)

    t = time.monotonic()
    with StatsSession(str(model_path)) as session:
        tables = [session.run(ref) for ref in calib]
    write_stats_files(tables, out_dir / "stats.parquet", out_dir / "shard_stats.parquet")
    secs["stats"] = round(time.monotonic() - t, 2)

    t = time.monotonic()
    plan = plan_task.fn(str(model_path), str(out_dir / "stats.parquet"), plan_settings, str(out_dir), calib, verify_settings, None)
    secs["plan"] = round(time.monotonic() - t, 2)

    t = time.monotonic()
    built = build_mixed_onnx_task.fn(str(model_path), plan, str(out_dir))
    secs["build"] = round(time.monotonic() - t, 2)
    artifact_path = Path(built["path"])

    t = time.monotonic()
    report = verify(str(model_path), str(artifact_path), holdout, verify_settings, providers=["CPUExecutionProvider"], emulate=True)
    secs["verify"] = round(time.monotonic() - t, 2)
    (out_dir / "verification.json").write_text(json.dumps(report, indent=1, default=str))
    secs["total"] = round(time.monotonic() - t_all - secs["data"], 2)

    counts = plan.get("counts") or {}
    fp32 = _fp32_names(plan)
    rec.update(
        nodes_total=counts.get("nodes", None), fp32_nodes=len(fp32), fp32_reasons=_reason_counts(plan), fp32_names=fp32,
        strategy=(plan.get("strategy") or {}).get("used"), search=_search_record(plan),
        holdout={"passed": bool(report.get("passed")), "reason": report.get("reason"), "worst": worst_error(report),
                 "samples": report.get("samples"), "outputs": _outputs_brief(report), "execution": report.get("execution")},
        plan_keys=sorted(plan), artifact=str(artifact_path),
    )
    if rec["nodes_total"] is None:
        rec["nodes_total"] = len(onnx.load(str(model_path), load_external_data=False).graph.node)

    # FP16 share, from the artifact (and from the tool's own cost model where it exists)
    fp32_model = load_model(str(model_path))
    feeds = dict(np.load(holdout[0].path))
    np.savez(out_dir / "sample.npz", **feeds)
    try:
        share = artifact_share(fp32_model, load_model(str(artifact_path)), feeds)
        rec["share"] = share.to_dict()
    except Exception as exc:
        rec["share"] = {"error": f"{type(exc).__name__}: {exc}"}
    rec["tool_share"] = tool_share(fp32_model, set(fp32), feeds)

    if all_fp16:
        t = time.monotonic()
        try:
            fp16_model = to_mixed_precision(fp32_model, set())
            fp16_path = save_model(fp16_model, out_dir / "model.fp16.onnx")
            rep16 = verify(str(model_path), str(fp16_path), holdout, verify_settings, providers=["CPUExecutionProvider"], emulate=True)
            rec["all_fp16"] = {"passed": bool(rep16.get("passed")), "worst": worst_error(rep16), "reason": rep16.get("reason"),
                               "outputs": _outputs_brief(rep16), "path": str(fp16_path)}
            try:
                rec["all_fp16"]["share"] = artifact_share(fp32_model, fp16_model, feeds).to_dict()
            except Exception as exc:
                rec["all_fp16"]["share"] = {"error": f"{type(exc).__name__}: {exc}"}
        except Exception as exc:
            rec["all_fp16"] = {"error": f"{type(exc).__name__}: {exc}"}
        secs["all_fp16_check"] = round(time.monotonic() - t, 2)
    rec["seconds"] = secs
    (out_dir / "record.json").write_text(json.dumps(rec, indent=1, default=str))
    return rec


# ------------------------------------------------------------------------------------- report


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f}%" if v >= 0.995 or v < 0.005 else f"{100 * v:.1f}%"


def _trail_text(trail: list, phases: dict) -> str:
    if len(trail) <= 1:
        return ""
    shown = trail if len(trail) <= 8 else trail[:4] + ["…"] + trail[-2:]
    ph = ", ".join(f"{k} {v}" for k, v in phases.items())
    return f" ({ph}; FP32 nodes " + " → ".join(str(x) for x in shown) + ")" if ph else " (" + " → ".join(str(x) for x in shown) + ")"


def row_cells(r: dict) -> dict:
    """The table's cells of one record."""
    if r.get("error"):
        return {"model": r["name"], "error": r["error"]}
    share = r.get("share") or {}
    hold = r.get("holdout") or {}
    a16 = r.get("all_fp16") or {}
    s = _search_record({k: v for k, v in (r.get("search") or {}).items() if k != "summary"})["summary"]
    trail = s.get("trail") or []
    return {
        "model": r["name"],
        "kind": r["kind"],
        "fp32": f"{r['fp32_nodes']} / {r['nodes_total']}",
        "share_flops": _pct(share.get("share_flops")),
        "share_nodes": (f"{share.get('compute_nodes_fp16')}/{share.get('compute_nodes')}" if share.get("compute_nodes") is not None else "—"),
        "gate": r.get("gate", "—"),
        "verdict": "**verified**" if hold.get("passed") else "**rejected**",
        "holdout": (hold.get("worst") or {}).get("text", "—"),
        "all_fp16": ("passes " if a16.get("passed") else "fails ") + (a16.get("worst") or {}).get("text", "—") if "worst" in a16 else a16.get("error", "—"),
        "seconds": f"{(r.get('seconds') or {}).get('total', 0):.0f}",
        "search": f"{s.get('outcome')}, {s.get('checks')} checks" + _trail_text(trail, s.get("phases") or {}),
    }
