"""``report.html``: one self-contained page per run that people would rather look at than read.

The page has no external URL (no scripts, fonts, styles or images fetched): the chart is an inline
SVG (``fp16guard.report.chart``), the styles are inline. Sections: verdict and key figures; the
chart of max |x| per tensor in graph order (log scale, threshold and 65504 marked, tensors touching
FP32 nodes highlighted); the FP32 nodes with their reasons; the tensors nearest the limit; the
verification table; lineage (inputs, versions, device) with the full manifest folded away.
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from typing import Any

from fp16guard import FP16_MAX
from fp16guard.records.verification import VerificationReport, worst_rel_error
from fp16guard.report.chart import COLOR_FP16, COLOR_FP32_IN, COLOR_FP32_OUT, max_abs_chart

_QUOTED = re.compile(r"input '([^']+)'")  # how plans without "inputs" named the inputs that triggered a rule
_TOP_TENSORS = 15

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;color:#fff;font-weight:600;font-size:13px;vertical-align:middle}
.pass{background:#2e7d32}.fail{background:#c62828}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:140px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fdecea}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 14px;vertical-align:middle}
code{font-size:12px} pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
"""


def render_report(stats_table: Any, plan: dict, verification: dict, manifest: dict) -> str:
    """Render the run's ``report.html`` content.

    Args:
        stats_table: ``stats.parquet`` as a pyarrow Table (columns ``tensor, producer, op_type,
            order, max_abs``, optional ``output_index, nonfinite, max_shard``), a list of row
            dicts, or None when no statistics exist.
        plan: ``plan.json`` (``threshold``, ``fp32_nodes`` [{name, op_type, outputs, reason,
            details}], ``counts``). May be empty.
        verification: ``verification.json`` (``passed``, ``reason``, ``outputs`` {name:
            {max_abs_error, max_rel_error, cosine, nonfinite, ...}}). May be empty.
        manifest: ``manifest.json`` (``name, version, run_id, created, trigger, inputs,
            versions, device``). May be empty.

    Returns:
        The HTML document as a string (the caller writes it, atomically).
    """
    plan, manifest = plan or {}, manifest or {}
    # Through the typed record: a NaN output shows no error figure, and the worst error is the
    # one definition every view uses.
    verification = VerificationReport.from_dict(verification).to_dict() if verification else {}
    rows = _rows(stats_table)
    threshold = plan.get("threshold")
    fp32_nodes = [n for n in plan.get("fp32_nodes") or [] if isinstance(n, dict)]
    fp32_out = {o for n in fp32_nodes for o in n.get("outputs") or []}
    # Plans record every input of an FP32 node ("inputs"); plans written before that only named
    # the inputs that triggered a rule, in their sentences.
    fp32_in = {i for n in fp32_nodes for i in (n.get("inputs") or [])}
    fp32_in |= {m for n in fp32_nodes if "inputs" not in n for d in n.get("details") or [] for m in _QUOTED.findall(str(d))}
    fp32_in -= fp32_out

    title = " / ".join(str(manifest[k]) for k in ("name", "version") if manifest.get(k)) or "fp16guard run"
    passed = verification.get("passed")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)} — fp16guard report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)} {_badge(passed)}</h1>",
        f'<div class="sub">{_subtitle(manifest)}</div>',
    ]
    if verification.get("reason"):
        out.append(f"<p><b>Verdict:</b> {escape(str(verification['reason']))}</p>")
    out.append(_cards(rows, plan, fp32_nodes, verification, threshold))

    out.append("<h2>max |x| per tensor, in graph order</h2>")
    if rows:
        out.append(max_abs_chart(rows, threshold, fp32_out, fp32_in))
        out.append(
            f'<div class="legend sub"><span style="background:{COLOR_FP32_OUT}"></span>output of an FP32 node'
            f'<span style="background:{COLOR_FP32_IN}"></span>read by an FP32 node'
            f'<span style="background:{COLOR_FP16}"></span>FP16'
            f" &nbsp; solid line: FP16 max 65504; dashed: threshold; ▲ non-finite. Hover a bar for its tensor.</div>"
        )
    else:
        out.append("<p>No statistics were recorded for this run.</p>")

    out.append(f"<h2>FP32 nodes ({len(fp32_nodes)})</h2>")
    out.append(_fp32_table(fp32_nodes) if fp32_nodes else "<p>None: the whole model is built in FP16.</p>")
    if rows:
        out.append(f"<h2>Tensors nearest the limit (top {min(_TOP_TENSORS, len(rows))})</h2>")
        out.append(_top_table(rows, threshold, fp32_out, fp32_in))
    out.append("<h2>Verification against FP32</h2>")
    out.append(_verification_table(verification))
    out.append("<h2>Lineage</h2>")
    out.append(_lineage(manifest))
    out.append("</body></html>\n")
    return "\n".join(out)


def _rows(stats_table: Any) -> list[dict]:
    if stats_table is None:
        return []
    rows = stats_table.to_pylist() if hasattr(stats_table, "to_pylist") else list(stats_table)
    return sorted(rows, key=lambda r: (r.get("order", 0), r.get("output_index", 0) or 0))


def _badge(passed: Any) -> str:
    if passed is None:
        return ""
    return f'<span class="badge {"pass" if passed else "fail"}">{"verified" if passed else "rejected"}</span>'


def _subtitle(manifest: dict) -> str:
    bits = []
    if manifest.get("run_id"):
        bits.append(f"run <code>{escape(str(manifest['run_id']))}</code>")
    if manifest.get("created"):
        bits.append(escape(str(manifest["created"])))
    trigger = manifest.get("trigger")
    if trigger:
        bits.append("trigger: " + escape(str(trigger.get("type") if isinstance(trigger, dict) else trigger)))
    backend = manifest.get("backend")
    if isinstance(backend, dict) and backend.get("name"):
        bits.append("backend: " + escape(str(backend["name"])))
    return " · ".join(bits)


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        if not math.isfinite(value):
            return escape(str(value))
        return f"{value:.{digits}g}"
    return escape(str(value))


def _cards(rows: list[dict], plan: dict, fp32_nodes: list, verification: dict, threshold: Any) -> str:
    finite = [r["max_abs"] for r in rows if isinstance(r.get("max_abs"), (int, float)) and math.isfinite(r["max_abs"])]
    above = sum(1 for v in finite if threshold and v > threshold)
    worst = worst_rel_error(verification)
    cards = [
        (len(rows), "tensors measured"),
        (f"{max(finite):.4g}" if finite else "—", "largest max |x|"),
        (above, f"tensors above threshold {threshold:g}" if threshold else "tensors above threshold"),
        (len(fp32_nodes), f"FP32 nodes (of {plan['counts'].get('fp32', 0) + plan['counts'].get('fp16', 0)} with float tensors)" if isinstance(plan.get("counts"), dict) and "fp16" in plan["counts"] else "FP32 nodes"),
        ("—" if worst is None else f"{worst:.3g}", "worst relative error"),
    ]
    return '<div class="cards">' + "".join(f"<div class=card><b>{escape(str(v))}</b><span>{escape(label)}</span></div>" for v, label in cards) + "</div>"


def _fp32_table(nodes: list[dict]) -> str:
    body = []
    for n in nodes:
        details = "<br>".join(escape(str(d)) for d in n.get("details") or [])
        reasons = ", ".join(n.get("reasons") or [n.get("reason", "")])
        outputs = ", ".join(n.get("outputs") or [])
        body.append(f"<tr><td><code>{escape(str(n.get('name', '')))}</code></td><td>{escape(str(n.get('op_type', '')))}</td><td>{escape(reasons)}</td><td>{details}</td><td><code>{escape(outputs)}</code></td></tr>")
    return "<table><tr><th>node</th><th>op</th><th>reason</th><th>details</th><th>outputs</th></tr>" + "".join(body) + "</table>"


def _top_table(rows: list[dict], threshold: Any, fp32_out: set, fp32_in: set) -> str:
    def key(r: dict) -> float:
        v = r.get("max_abs")
        return math.inf if r.get("nonfinite") or not isinstance(v, (int, float)) or math.isnan(v) else v

    body = []
    for r in sorted(rows, key=key, reverse=True)[:_TOP_TENSORS]:
        v, t = key(r), r.get("tensor", "")
        role = "FP32 output" if t in fp32_out else "FP32 input" if t in fp32_in else "FP16"
        cls = ' class="bad"' if v > FP16_MAX else ""
        body.append(
            f"<tr{cls}><td><code>{escape(str(t))}</code></td><td>{escape(str(r.get('producer') or '(graph input)'))}</td><td>{escape(str(r.get('op_type') or ''))}</td>"
            f'<td class="num">{_fmt(float(v))}</td><td class="num">{_fmt(v / FP16_MAX, 3)}</td><td class="num">{_fmt(r.get("nonfinite"))}</td><td>{role}</td><td>{escape(str(r.get("max_shard") or ""))}</td></tr>'
        )
    return "<table><tr><th>tensor</th><th>producer</th><th>op</th><th>max |x|</th><th>÷ 65504</th><th>non-finite</th><th>built as</th><th>seen in shard</th></tr>" + "".join(body) + "</table>"


def _verification_table(verification: dict) -> str:
    outputs = verification.get("outputs") or {}
    if not outputs:
        return "<p>No verification figures recorded.</p>"
    known = ["max_abs_error", "max_rel_error", "cosine", "nonfinite"]
    extra = sorted({k for o in outputs.values() if isinstance(o, dict) for k in o} - set(known) - {"passed", "reason"})
    cols = known + extra
    head = "<tr><th>output</th>" + "".join(f"<th>{escape(c)}</th>" for c in cols) + "<th>verdict</th></tr>"
    body = []
    for name, figures in outputs.items():
        figures = figures if isinstance(figures, dict) else {}
        ok = figures.get("passed")
        cls = ' class="bad"' if ok is False or figures.get("nonfinite") else ""
        cells = "".join(f'<td class="num">{_fmt(figures.get(c))}</td>' for c in cols)
        verdict = "" if ok is None else ("pass" if ok else "fail")
        if figures.get("reason"):
            verdict += f" — {escape(str(figures['reason']))}"
        body.append(f"<tr{cls}><td><code>{escape(str(name))}</code></td>{cells}<td>{verdict}</td></tr>")
    return "<table>" + head + "".join(body) + "</table>"


def _lineage(manifest: dict) -> str:
    if not manifest:
        return "<p>No manifest.</p>"
    rows = []
    inputs = manifest.get("inputs") or {}
    model = inputs.get("model") if isinstance(inputs, dict) else None
    if isinstance(model, dict):
        rows.append(("model", model.get("location"), model.get("sha256")))
    for role in ("calibration", "holdout"):
        shards = inputs.get(role) if isinstance(inputs, dict) else None
        for s in shards or []:
            if isinstance(s, dict):
                by = f" (statistics by flow run {s['computed_by']})" if s.get("computed_by") else ""
                rows.append((role, f"{s.get('location', '')}{by}", s.get("sha256")))
    table = "<table><tr><th>input</th><th>location</th><th>sha256</th></tr>" + "".join(
        f"<tr><td>{escape(str(r))}</td><td><code>{escape(str(loc or ''))}</code></td><td><code>{escape(str(sha or '')[:16])}</code></td></tr>" for r, loc, sha in rows
    ) + "</table>"
    versions = manifest.get("versions") or {}
    ver = ", ".join(f"{escape(k)} {escape(str(v))}" for k, v in versions.items() if v) if isinstance(versions, dict) else ""
    full = escape(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return f"{table}<p class=sub>{ver}</p><details><summary>full manifest.json</summary><pre>{full}</pre></details>"
