"""What a person sees of a run in the Prefect UI: a markdown summary and a table of the tensors
nearest the FP16 limit. Pure functions; ``tasks/ui.py`` publishes them as Prefect artifacts."""

from __future__ import annotations

import math
import re

import pyarrow as pa

from fp16guard import FP16_MAX
from fp16guard.records.verification import VerificationReport
from fp16guard.report.plan_summary import plan_lines, repair_record, step_added_text, step_worst_text, fmt_seconds
from fp16guard.report.verdict import headline, share_text

__all__ = ["artifact_key", "summary_markdown", "tensors_near_limit"]


def artifact_key(name: str, version: str, kind: str) -> str:
    """A Prefect artifact key for a model version: lowercase letters, digits and dashes only
    (docs/FACTS.md #14), e.g. ``fp16guard-resnet-50-v7-summary``. Same name and version → same key, so
    the UI lists each model version's runs as the history of one artifact."""
    raw = f"fp16guard-{name}-{version}-{kind}".lower()
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")[:200]


def tensors_near_limit(stats: pa.Table, threshold: float, fp32_nodes: set[str], limit: int = 25) -> list[dict]:
    """The ``limit`` tensors with the largest max |x|, as rows for a table artifact.

    Columns: tensor, producer, op_type, max_abs, of_fp16_max (max_abs / 65504), over_threshold,
    producer_in_fp32.
    """
    rows = sorted(stats.to_pylist(), key=lambda r: -_finite_or_inf(r["max_abs"]))[:limit]
    return [
        {
            "tensor": r["tensor"],
            "producer": r["producer"] or "(graph input)",
            "op_type": r["op_type"] or "",
            "max_abs": float(f"{r['max_abs']:.6g}"),
            "of_fp16_max": round(r["max_abs"] / FP16_MAX, 4),
            "over_threshold": bool(r["max_abs"] > threshold),
            "producer_in_fp32": r["producer"] in fp32_nodes,
        }
        for r in rows
    ]


def summary_markdown(name: str, version: str, result: dict, plan: dict, verification: dict, stats: pa.Table) -> str:
    """Markdown summary of one run: verdict (with the low-FP16-share and speed warnings of
    :func:`fp16guard.report.verdict.headline`), release, FP16 share of FLOPs, how the FP32 set was found (strategy, repair
    outcome and one row per repair iteration), verification figures, FP32 nodes with reasons,
    worst tensors."""
    record = VerificationReport.from_dict(verification)
    verdict = "✅ verified" if record.passed else "❌ rejected"
    first = result.get("headline") or headline(record.passed, record.reason, result.get("fp16_share"), result.get("speed_verdict"))
    if record.passed and " — but " in first:
        verdict = "⚠️ verified — but " + first.split(" — but ", 1)[1]
    worst = record.worst_rel_error
    lines = [
        f"# {name} {version} — {verdict}",
        "",
        f"- run: `{result.get('run_id')}` → `{result.get('run_dir')}`",
        f"- release: {'**released**' if result.get('released') else 'not released'} ({result.get('release_reason', '')})",
        f"- threshold: {plan.get('threshold')} (FP16 max {FP16_MAX:g})",
        f"- FP32 nodes: {len(plan.get('fp32_nodes', []))} of {plan.get('counts', {}).get('nodes') or result.get('nodes_total') or '?'}",
    ]
    if share_text(result.get("fp16_share")):
        lines.append(f"- FP16 share: {_cell(share_text(result.get('fp16_share')))}")
    if (result.get("speed_verdict") or {}).get("judged"):
        lines.append(f"- speed verdict: {_cell(result['speed_verdict']['text'])}")
    lines += [f"- {_cell(line)}" for line in plan_lines(plan)]
    lines.append(f"- worst relative error: {_fmt(worst)}")
    if result.get("speed"):  # fp16guard.backends.profile.speed_summary
        lines.append(f"- speed: {result['speed']}")
    if verification.get("execution"):
        lines.append(f"- checked with: {verification['execution']}")
    if record.reason:
        lines.append(f"- reason: {record.reason}")
    lines += [
        "", "## Verification against FP32", "",
        "| output | max abs error | max rel error | cosine | non-finite | top-1 agree | top-k agree | agree at threshold | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for out, fig in record.outputs.items():
        c = fig.checks
        lines.append(
            f"| `{_cell(out)}` | {_fmt(fig.max_abs_error)} | {_fmt(fig.max_rel_error)} | {_fmt(fig.cosine)} | {fig.nonfinite} "
            f"| {_fmt(c.get('top1_agreement'))} | {_fmt(c.get('topk_agreement'))} | {_fmt(c.get('threshold_agreement'))} | {_cell(fig.gate or 'numeric')} |"
        )
    lines += _repair_table(plan)
    lines += ["", "## Nodes kept in FP32", "", "| node | op | reason |", "|---|---|---|"]
    for node in plan.get("fp32_nodes", [])[:50]:
        detail = "; ".join(node.get("details", [])[:2])
        lines.append(f"| `{_cell(node['name'])}` | {_cell(node['op_type'])} | {_cell(node['reason'])}: {_cell(detail)} |")
    if len(plan.get("fp32_nodes", [])) > 50:
        lines.append(f"| … | | {len(plan['fp32_nodes']) - 50} more in plan.json |")
    lines += ["", "## Largest activations", "", "| tensor | producer | max abs | of 65504 |", "|---|---|---|---|"]
    for row in tensors_near_limit(stats, plan.get("threshold", FP16_MAX), set(), limit=10):
        lines.append(f"| `{_cell(row['tensor'])}` | {_cell(row['producer'])} | {row['max_abs']:g} | {row['of_fp16_max']:.2%} |")
    return "\n".join(lines) + "\n"


def _repair_table(plan: dict) -> list[str]:
    """One row per repair iteration (a candidate with NaN/inf shows ``non-finite``); [] when
    repair did not run or recorded no iteration."""
    record = repair_record(plan)
    if record is None or not record.steps:
        return []
    lines = ["", f"## Repair: {_cell(record.outcome)}", "", _cell(record.message), "",
             "| iteration | FP32 nodes | worst rel error | passed | nodes added | seconds |", "|---|---|---|---|---|---|"]
    for step in record.steps:
        added = ", ".join(step_added_text(step, with_why=False)) or "—"
        lines.append(f"| {step.iteration} | {step.fp32_nodes} | {_cell(step_worst_text(step))} | {'yes' if step.passed else 'no'} | {_cell(added)} | {fmt_seconds(step.seconds)} |")
    return lines


def _cell(text) -> str:
    """Text safe inside a markdown table cell: a ``|`` (as in "max |x|") would end the cell,
    a newline the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _finite_or_inf(x: float) -> float:
    return math.inf if x is None or math.isnan(x) else x


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3g}"
