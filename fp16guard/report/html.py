"""``report.html``: one self-contained page per run that people would rather look at than read.

The page has no external URL (no scripts, fonts, styles or images fetched): the chart is an inline
SVG (``fp16guard.report.chart``), the styles are inline. Sections: verdict and key figures; the
chart of max |x| per tensor in graph order (log scale, threshold and 65504 marked, tensors touching
FP32 nodes highlighted); how the FP32 set was found (strategy, the rules' share by reason, one row
per repair iteration, folded scale regions); the FP32 nodes with their reasons; the tensors nearest the limit; the
verification table (numeric figures and task checks per output); lineage (inputs, versions,
device) with the full manifest folded away.

The page is the Jinja2 template ``templates/report.html.j2`` rendered with autoescape on: this
module only prepares plain values (text and numbers formatted as text), so a node, tensor or
output named ``<script>`` shows as text, never as markup. The one piece of markup passed in is
the SVG chart, which :mod:`fp16guard.report.chart` escapes itself.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from fp16guard import FP16_MAX
from fp16guard.records.serialize import jsonable
from fp16guard.records.verification import VerificationReport, worst_rel_error
from fp16guard.report.chart import COLOR_FP16, COLOR_FP32_IN, COLOR_FP32_OUT, max_abs_chart
from fp16guard.plan.cost import fmt_share
from fp16guard.report.verdict import headline
from fp16guard.report.plan_summary import (
    ISLAND_REASON,
    REPAIR_REASON,
    fmt_seconds,
    folded_regions,
    plan_summary,
    repair_record,
    step_added_text,
    step_worst_text,
)

__all__ = ["render_report"]

_QUOTED = re.compile(r"input '([^']+)'")  # how plans without "inputs" named the inputs that triggered a rule
_TOP_TENSORS = 15
#: Verification columns shown first, then the task checks, then any other figure recorded.
_NUMERIC_COLUMNS = ["max_abs_error", "max_rel_error", "cosine", "nonfinite"]
_CHECK_COLUMNS = ["top1_agreement", "topk_agreement", "threshold_agreement", "threshold_iou"]


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fp16guard.report", "templates"),
        autoescape=True,  # every value is text unless wrapped in Markup by this module
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the render, not the page
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")


def render_report(stats_table: Any, plan: dict, verification: dict, manifest: dict) -> str:
    """Render the run's ``report.html`` content.

    Args:
        stats_table: ``stats.parquet`` as a pyarrow Table (columns ``tensor, producer, op_type,
            order, max_abs``, optional ``output_index, nonfinite, max_shard``), a list of row
            dicts, or None when no statistics exist.
        plan: ``plan.json`` (``threshold``, ``fp32_nodes`` [{name, op_type, outputs, inputs,
            reason, details}], ``counts``). May be empty.
        verification: ``verification.json`` (see :class:`fp16guard.records.VerificationReport`).
            May be empty.
        manifest: ``manifest.json`` (``name, version, run_id, created, trigger, inputs,
            versions, device``). May be empty.

    Returns:
        The HTML document as a string (the caller writes it, atomically).
    """
    plan, manifest = plan or {}, manifest or {}
    # Through the typed record: a NaN output shows no error figure, and the worst error is the
    # one definition every view uses.
    record = VerificationReport.from_dict(verification) if verification else None
    rows = _rows(stats_table)
    threshold = plan.get("threshold")
    fp32_nodes = [n for n in plan.get("fp32_nodes") or [] if isinstance(n, dict)]
    fp32_out = {o for n in fp32_nodes for o in n.get("outputs") or []}
    # Plans record every input of an FP32 node ("inputs"); plans written before that only named
    # the inputs that triggered a rule, in their sentences.
    fp32_in = {i for n in fp32_nodes for i in (n.get("inputs") or [])}
    fp32_in |= {m for n in fp32_nodes if "inputs" not in n for d in n.get("details") or [] for m in _QUOTED.findall(str(d))}
    fp32_in -= fp32_out

    columns, verification_rows = _verification(record)
    context = {
        "title": " / ".join(str(manifest[k]) for k in ("name", "version") if manifest.get(k)) or "fp16guard run",
        "passed": record.passed if record else None,
        "subtitle": _subtitle(manifest),
        "reason": record.reason if record else None,
        "headline": _headline(record, manifest),
        "speed_verdict": (manifest.get("speed") or {}).get("text") if (manifest.get("speed") or {}).get("judged") else None,
        "release_refused": (manifest.get("release_gate") or {}).get("refused"),
        "cards": _cards(rows, plan, fp32_nodes, record, threshold) + _share_cards(manifest),
        "chart": Markup(max_abs_chart(rows, threshold, fp32_out, fp32_in)) if rows else None,
        "colors": {"fp32_out": COLOR_FP32_OUT, "fp32_in": COLOR_FP32_IN, "fp16": COLOR_FP16},
        "found": _how_found(plan),
        "fp32_nodes": [_fp32_row(n) for n in fp32_nodes],
        "fp32_groups": _fp32_groups(fp32_nodes),
        "top_rows": _top_rows(rows, fp32_out, fp32_in),
        "verification_columns": columns,
        "verification_rows": verification_rows,
        "execution": record.execution if record else None,
        "lineage": _lineage(manifest),
    }
    return _template().render(**context)


def _rows(stats_table: Any) -> list[dict]:
    if stats_table is None:
        return []
    rows = stats_table.to_pylist() if hasattr(stats_table, "to_pylist") else list(stats_table)
    return sorted(rows, key=lambda r: (r.get("order", 0), r.get("output_index", 0) or 0))


def _subtitle(manifest: dict) -> list[dict]:
    bits: list[dict] = []
    if manifest.get("run_id"):
        bits.append({"label": "run ", "code": str(manifest["run_id"])})
    if manifest.get("created"):
        bits.append({"label": str(manifest["created"])})
    trigger = manifest.get("trigger")
    if trigger:
        bits.append({"label": "trigger: " + str(trigger.get("type") if isinstance(trigger, dict) else trigger)})
    backend = manifest.get("backend")
    if isinstance(backend, dict) and backend.get("name"):
        bits.append({"label": "backend: " + str(backend.get("implementation") or backend["name"])})
    profile = manifest.get("profile")  # fp16guard.backends.profile record
    if isinstance(profile, dict) and (profile.get("summary") or profile.get("note")):
        bits.append({"label": "speed: " + str(profile.get("summary") or profile.get("note"))})
    return bits


def _fmt(value: Any, digits: int = 4) -> str:
    """A figure as text: None is "—", booleans yes/no, floats to ``digits`` significant digits."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    if isinstance(value, (dict, list)):
        return json.dumps(jsonable(value), sort_keys=True)
    return str(value)


def _cards(rows: list[dict], plan: dict, fp32_nodes: list, record: VerificationReport | None, threshold: Any) -> list[tuple[str, str]]:
    finite = [r["max_abs"] for r in rows if isinstance(r.get("max_abs"), (int, float)) and math.isfinite(r["max_abs"])]
    above = sum(1 for v in finite if threshold and v > threshold)
    worst = worst_rel_error(record) if record else None
    counts = plan.get("counts")
    of_float = f"FP32 nodes (of {counts.get('fp32', 0) + counts.get('fp16', 0)} with float tensors)" if isinstance(counts, dict) and "fp16" in counts else "FP32 nodes"
    return [
        (str(len(rows)), "tensors measured"),
        (f"{max(finite):.4g}" if finite else "—", "largest max |x|"),
        (str(above), f"tensors above threshold {threshold:g}" if threshold else "tensors above threshold"),
        (str(len(fp32_nodes)), of_float),
        ("—" if worst is None else f"{worst:.3g}", "worst relative error"),
    ]


def _headline(record: VerificationReport | None, manifest: dict) -> str | None:
    """The verdict's first line when it warns (low FP16 share, no speed-up): from the manifest,
    else recomputed from its FP16 share and speed records; None when there is nothing to add."""
    if record is None or not record.passed:
        return None
    text = manifest.get("verdict") or headline(True, None, manifest.get("fp16_share"), manifest.get("speed"))
    return text if " — but " in text else None


def _share_cards(manifest: dict) -> list[tuple[str, str]]:
    """Cards for the FP16 share of the estimated FLOPs and of the compute nodes, and the gain
    kept on the GPU; none for a manifest without them."""
    share = manifest.get("fp16_share") or {}
    cards = []
    if share:
        cards.append((fmt_share(share.get("share_flops")), "of the estimated FLOPs in FP16"))
        cards.append((f"{share.get('compute_nodes_fp16', 0)} of {share.get('compute_nodes_total', 0)}", "Conv/Gemm/MatMul nodes in FP16"))
    speed = manifest.get("speed") or {}
    if speed.get("judged"):
        kept = speed.get("gain_kept")
        cards.append((f"{speed['speedup']:.2f}x", f"FP32 speed (batch {speed.get('batch')}, {speed.get('device')})"))
        cards.append(("—" if kept is None else f"{max(kept, 0.0):.0%}", "of the FP16 gain kept" if kept is not None else "no FP16 gain to keep"))
    return cards


def _how_found(plan: dict) -> dict | None:
    """The "How the FP32 set was found" section: strategy, the rules' FP32 nodes by reason, one
    row per repair iteration (a candidate with NaN/inf shows ``non-finite``, never a figure),
    repair's outcome sentence, the folded scale regions. None when the plan has no nodes and no
    strategy or repair record (an empty plan)."""
    if not plan or ("fp32_nodes" not in plan and "strategy" not in plan and "repair" not in plan):
        return None
    summary = plan_summary(plan)
    by_reason = summary["fp32_by_reason"]
    rules = {r: c for r, c in by_reason.items() if r not in (REPAIR_REASON, ISLAND_REASON)}
    record = repair_record(plan)
    strategy = None
    if summary["strategy"]:
        strategy = f"{summary['strategy']}" + (f" (requested {summary['strategy_requested']}" + (f": {summary['strategy_why']})" if summary["strategy_why"] else ")") if summary["strategy_requested"] else "")
    steps = []
    for step in record.steps if record else ():
        steps.append({
            "iteration": str(step.iteration),
            "fp32_nodes": str(step.fp32_nodes),
            "worst": step_worst_text(step),
            "passed": "yes" if step.passed else "no",
            "added": step_added_text(step),
            "verdict": step.reason,
            "seconds": fmt_seconds(step.seconds),
            "bad": not step.passed,
        })
    regions = [
        {
            "first": str(r.get("first", "")),
            "last": str(r.get("last", "")),
            "tensors": str(r.get("tensors", "")),
            "scale": f"2**{int(r.get('exponent') or 0)} (= {2 ** int(r.get('exponent') or 0)})",
            "why": str(r.get("why", "")),
        }
        for r in folded_regions(plan)
    ]
    folding = summary["folding"]
    return {
        "strategy": strategy,
        "rules_total": sum(rules.values()),
        "rules": [(str(r), str(c)) for r, c in rules.items()],
        "repair_added": by_reason.get(REPAIR_REASON, 0),
        "islands_added": by_reason.get(ISLAND_REASON, 0),
        "total": summary["fp32_nodes"],
        "repair": None if record is None else {
            "outcome": record.outcome,
            "message": record.message,
            "samples": str(record.samples),
            "seconds": fmt_seconds(record.seconds),
            "steps": steps,
        },
        "regions": regions,
        "refused": folding["refused"] if folding else 0,
    }


def _fp32_row(n: dict) -> dict:
    return {
        "name": str(n.get("name", "")),
        "op_type": str(n.get("op_type", "")),
        "reasons": ", ".join(map(str, n.get("reasons") or [n.get("reason", "")])),
        "details": [str(d) for d in n.get("details") or []],
        "outputs": ", ".join(map(str, n.get("outputs") or [])),
    }


def _fp32_groups(fp32_nodes: list[dict]) -> list[dict]:
    """The FP32 nodes grouped by reason, largest group first: ``{"reason", "count", "ops"
    ("MatMul 40, Add 32"), "common" (details every node of the group shares, said once), "nodes"
    (rows of :func:`_fp32_row` with only their own details)}``."""
    groups: dict[str, list[dict]] = {}
    for n in fp32_nodes:
        row = _fp32_row(n)
        groups.setdefault(row["reasons"], []).append(row)
    out = []
    for reason, rows in groups.items():
        common = [d for d in rows[0]["details"] if all(d in r["details"] for r in rows[1:])] if len(rows) > 1 else []
        ops: dict[str, int] = {}
        for r in rows:
            ops[r["op_type"]] = ops.get(r["op_type"], 0) + 1
        out.append({
            "reason": reason or "(no reason recorded)",
            "count": len(rows),
            "ops": ", ".join(f"{op} {c}" for op, c in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])) if op),
            "common": common,
            "nodes": [{**r, "details": [d for d in r["details"] if d not in common]} for r in rows],
        })
    return sorted(out, key=lambda g: -g["count"])


def _top_rows(rows: list[dict], fp32_out: set, fp32_in: set) -> list[dict]:
    def key(r: dict) -> float:
        v = r.get("max_abs")
        return math.inf if r.get("nonfinite") or not isinstance(v, (int, float)) or math.isnan(v) else v

    out = []
    for r in sorted(rows, key=key, reverse=True)[:_TOP_TENSORS]:
        v, t = key(r), r.get("tensor", "")
        out.append({
            "tensor": str(t),
            "producer": str(r.get("producer") or "(graph input)"),
            "op_type": str(r.get("op_type") or ""),
            "max_abs": _fmt(float(v)),
            "ratio": _fmt(v / FP16_MAX, 3),
            "nonfinite": _fmt(r.get("nonfinite")),
            "role": "FP32 output" if t in fp32_out else "FP32 input" if t in fp32_in else "FP16",
            "shard": str(r.get("max_shard") or ""),
            "bad": v > FP16_MAX,
        })
    return out


def _verification(record: VerificationReport | None) -> tuple[list[str], list[dict]]:
    if record is None or not record.outputs:
        return [], []
    outputs = {name: fig.to_dict() for name, fig in record.outputs.items()}
    checks = [c for c in _CHECK_COLUMNS if any(c in (f.get("checks") or {}) for f in outputs.values())]
    extra = sorted({k for f in outputs.values() for k in f} - set(_NUMERIC_COLUMNS) - {"passed", "reason", "checks", "gate"})
    rows = []
    for name, figures in outputs.items():
        ok = figures.get("passed")
        verdict = "" if ok is None else ("pass" if ok else "fail")
        if figures.get("gate") and figures["gate"] != "numeric":
            verdict += f" (gate {figures['gate']})"
        if figures.get("reason"):
            verdict += f" — {figures['reason']}"
        cells = [_fmt(figures.get(c)) for c in _NUMERIC_COLUMNS] + [_fmt((figures.get("checks") or {}).get(c)) for c in checks] + [_fmt(figures.get(c)) for c in extra]
        rows.append({"name": str(name), "cells": cells, "verdict": verdict, "bad": ok is False or bool(figures.get("nonfinite"))})
    return _NUMERIC_COLUMNS + checks + extra, rows


def _lineage(manifest: dict) -> dict | None:
    if not manifest:
        return None
    rows = []
    inputs = manifest.get("inputs") or {}
    model = inputs.get("model") if isinstance(inputs, dict) else None
    if isinstance(model, dict):
        rows.append(("model", str(model.get("location") or ""), str(model.get("sha256") or "")[:16]))
    for role in ("calibration", "holdout"):
        shards = inputs.get(role) if isinstance(inputs, dict) else None
        for s in shards or []:
            if isinstance(s, dict):
                by = f" (statistics by flow run {s['computed_by']})" if s.get("computed_by") else ""
                rows.append((role, f"{s.get('location', '')}{by}", str(s.get("sha256") or "")[:16]))
    versions = manifest.get("versions") or {}
    ver = ", ".join(f"{k} {v}" for k, v in versions.items() if v) if isinstance(versions, dict) else ""
    return {"inputs": rows, "versions": ver, "full": json.dumps(jsonable(manifest), indent=2, sort_keys=True)}
