"""How a run's FP32 set was found, in short: the plan strategy, the rules' and repair's share of
the FP32 nodes, every repair iteration, the folded scale regions.

Pure functions over ``plan.json`` (a dict: ``fp32_nodes``, optional ``strategy``, ``folding``,
``islands``, ``repair``; see docs/PLANNING.md and docs/FOLDING.md). Every view of a run uses
them: the manifest's ``plan`` summary, ``report.html``, the Prefect UI summary and flow log, and
``fp16guard run``'s own summary, so they all say the same thing in the same words.

A repair iteration whose candidate had NaN/inf outputs (``nonfinite > 0``, or a worst error that
is None or not finite) is shown as ``non-finite``, never with a finite error figure.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping

from fp16guard.errors import ConfigError
from fp16guard.plan.records import RepairRecord, RepairStep

__all__ = [
    "step_line",
    "REPAIR_REASON",
    "ISLAND_REASON",
    "plan_summary",
    "repair_record",
    "repair_line",
    "strategy_line",
    "plan_lines",
    "step_worst_text",
    "step_added_text",
    "folded_regions",
    "fmt_seconds",
]

#: Reason code of nodes pinned by repair (``fp16guard.plan.repair.REPAIR_REASON``; not imported
#: from there to keep onnx and the repair machinery out of the report's imports).
REPAIR_REASON = "repair_precision"
#: Reason code of FP16 runs moved to FP32 by the cost-aware islands (``plan.strategies.islands``).
ISLAND_REASON = "cost_island"
#: How many added nodes a repair row names before "+N more".
ADDED_SHOWN = 3


def repair_record(plan: Mapping[str, Any] | None) -> RepairRecord | None:
    """The plan's ``repair`` key as a typed record; None when repair did not run or the record
    cannot be read (a view of a run never fails on it: ``plan.json`` itself was validated when
    it was written)."""
    data = (plan or {}).get("repair")
    if data is None:
        return None
    if isinstance(data, RepairRecord):
        return data
    try:
        return RepairRecord.from_dict(data)
    except ConfigError:
        return None


def _reasons(plan: Mapping[str, Any]) -> Counter:
    return Counter(str(n.get("reason") or "?") for n in plan.get("fp32_nodes") or [] if isinstance(n, Mapping))


def folded_regions(plan: Mapping[str, Any] | None) -> list[dict]:
    """The ``folding.regions`` whose scale was folded (status ``folded``), in plan order."""
    folding = (plan or {}).get("folding")
    regions = folding.get("regions") if isinstance(folding, Mapping) else None
    return [dict(r) for r in regions or [] if isinstance(r, Mapping) and r.get("status", "folded") == "folded" and (r.get("exponent") or 0) > 0]


def _iterations(record: RepairRecord) -> int:
    """Repair iterations that pinned nodes (the check of the rule-based plan is not one)."""
    return sum(1 for s in record.steps if s.added)


def _added(record: RepairRecord) -> int:
    return sum(len(s.added) for s in record.steps)


def fmt_seconds(seconds: float | None) -> str:
    """Wall time for people: ``59 s``, ``2.4 s``; ``—`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def step_worst_text(step: RepairStep) -> str:
    """The worst relative error of one repair iteration's candidate: ``non-finite`` (with the
    count of NaN/inf elements when known) when it had any, otherwise 3 significant digits."""
    worst = step.worst_rel_error
    if step.nonfinite or worst is None or not math.isfinite(worst):
        return f"non-finite ({step.nonfinite} elements)" if step.nonfinite else "non-finite"
    return f"{worst:.3g}"


def step_added_text(step: RepairStep, shown: int = ADDED_SHOWN, with_why: bool = True) -> list[str]:
    """The first ``shown`` nodes pinned after this check (``name (op): why``), then ``+N more``."""
    items = []
    for a in step.added[:shown]:
        text = f"{a.get('name', '?')} ({a.get('op_type', '')})"
        if with_why and a.get("why"):
            text += f": {a['why']}"
        items.append(text)
    if len(step.added) > shown:
        items.append(f"+{len(step.added) - shown} more")
    return items


def plan_summary(plan: Mapping[str, Any] | None) -> dict[str, Any]:
    """The compact summary the manifest records under ``plan``.

    Returns:
        ``{"strategy": used or None, "strategy_requested", "strategy_why", "fp32_nodes": n,
        "fp32_by_reason": {reason: count} (primary reasons), "repair": None or {"outcome",
        "iterations", "seconds", "samples", "nodes_added", "nodes_returned", "checks",
        "fp32_flops_share", "stability", "message"}, "folding": None or
        {"regions": folded regions, "refused": refused regions, "max_scale": 2**e or None,
        "max_exponent"}, "islands": moved runs or None}``.
    """
    plan = plan or {}
    strategy = plan.get("strategy") if isinstance(plan.get("strategy"), Mapping) else {}
    record = repair_record(plan)
    folding = plan.get("folding") if isinstance(plan.get("folding"), Mapping) else None
    summary: dict[str, Any] = {
        "strategy": strategy.get("used"),
        "strategy_requested": strategy.get("requested"),
        "strategy_why": strategy.get("why"),
        "fp32_nodes": len(plan.get("fp32_nodes") or []),
        "fp32_by_reason": dict(sorted(_reasons(plan).items(), key=lambda kv: (-kv[1], kv[0]))),
        "repair": None,
        "folding": None,
        "islands": len(plan["islands"]) if isinstance(plan.get("islands"), list) else None,
    }
    if record is not None:
        summary["repair"] = {
            "outcome": record.outcome,
            "iterations": _iterations(record),
            "seconds": record.seconds,
            "samples": record.samples,
            "nodes_added": _added(record),
            "nodes_returned": len(record.returned),
            "checks": record.checks,
            "fp32_flops_share": record.fp32_flops_share,
            "stability": record.stability,
            "message": record.message,
        }
    if folding is not None:
        folded = folded_regions(plan)
        exponent = max((int(r.get("exponent") or 0) for r in folded), default=None)
        summary["folding"] = {
            "regions": len(folded),
            "refused": sum(1 for r in folding.get("regions") or [] if isinstance(r, Mapping) and r.get("status") == "refused"),
            "max_exponent": exponent,
            "max_scale": 2**exponent if exponent is not None else None,
        }
    return summary


def repair_line(plan: Mapping[str, Any] | None) -> str | None:
    """One line about repair, e.g. ``repair: repaired — N nodes pinned in K iterations, T s``;
    None when repair did not run."""
    record = repair_record(plan)
    if record is None:
        return None
    added, iterations, took = _added(record), _iterations(record), fmt_seconds(record.seconds)
    returned = len(record.returned)
    back = f"{returned} node{'s' if returned != 1 else ''} given back to FP16"
    checks = f" in {record.checks} checks" if record.checks else ""
    if record.outcome == "unchanged":
        return f"repair: unchanged — the rule-based plan passed on {record.samples} calibration samples, {took}"
    if record.outcome == "all_fp16":
        return f"repair: all_fp16 — the all-FP16 build passed on {record.samples} calibration samples; {back}, {took}"
    if record.outcome == "shrunk":
        return f"repair: shrunk — the rule-based plan passed on {record.samples} calibration samples; {back}{checks}, {took}"
    if record.outcome == "skipped":
        return f"repair: skipped — {record.message}" if record.message else "repair: skipped"
    line = f"repair: {record.outcome} — {added} node{'s' if added != 1 else ''} pinned in {iterations} iteration{'s' if iterations != 1 else ''}"
    line += f", {back}{checks}, {took}" if returned else f", {took}"
    if record.outcome != "repaired" and record.message:
        line += f"; {record.message}"
    return line


def strategy_line(plan: Mapping[str, Any] | None) -> str | None:
    """One line about the plan strategy and folding, e.g. ``strategy: fold (requested auto:
    folding keeps 0 compute nodes FP32 against 3 when pinning); 2 regions folded, largest scale
    64 (2^6)``; None when the plan records no strategy."""
    summary = plan_summary(plan)
    if not summary["strategy"]:
        return None
    line = f"strategy: {summary['strategy']}"
    why = summary["strategy_why"]
    requested = summary["strategy_requested"]
    if requested and requested != summary["strategy"] or (why and why != "requested"):
        line += f" (requested {requested}" + (f": {why})" if why else ")")
    folding = summary["folding"]
    if folding is not None:
        line += f"; {folding['regions']} region{'s' if folding['regions'] != 1 else ''} folded"
        if folding["max_exponent"] is not None:
            # "2^e", not "2**e": the line also goes into markdown, where ** starts bold text.
            line += f", largest scale {folding['max_scale']} (2^{folding['max_exponent']})"
    if summary["islands"]:
        line += f"; {summary['islands']} cost island{'s' if summary['islands'] != 1 else ''} moved to FP32"
    return line


def plan_lines(plan: Mapping[str, Any] | None) -> list[str]:
    """The strategy line and the repair line, those that apply (0 to 2 lines)."""
    return [line for line in (strategy_line(plan), repair_line(plan)) if line]


def step_line(step: RepairStep) -> str:
    """One line about one check of the search, for logs while it runs, e.g. ``search check 12
    (shrink, 3 nodes back to FP16): 41 FP32 nodes, 2.1% of FLOPs; error 0.0123, x1.18 margin:
    accepted, 1.4 s``."""
    what = step.phase
    if step.removed:
        what += f", {len(step.removed)} node{'s' if len(step.removed) != 1 else ''} back to FP16"
    share = "" if step.fp32_flops_share is None else f", {100 * step.fp32_flops_share:.3g}% of FLOPs"
    verdict = "accepted" if step.accepted else ("passed without the margin" if step.passed else "failed")
    margin = "" if step.inflation is None else f", x{step.inflation:.3g} margin"
    return f"search check {step.iteration} ({what}): {step.fp32_nodes} FP32 nodes{share}; error {step_worst_text(step)}{margin}: {verdict}, {fmt_seconds(step.seconds)}"
