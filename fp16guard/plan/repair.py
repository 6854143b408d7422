"""Automatic repair: pin the nodes where FP16 error comes from until the plan passes the gate.

A strategy applied after the rules (:func:`fp16guard.plan.planner.make_plan`). The rules see
overflow and underflow; they cannot see precision loss without either (cancellation of nearly
equal large numbers, long sums, a softmax over thousands of classes). Repair measures it:

1. Build the plan's candidate and check it against FP32 on a **calibration** slice (the first
   ``repair_samples`` samples), through FP16 storage emulation, with the user's verification gate.
   The holdout is never touched: it stays the independent final check.
2. Passed: the plan is returned unchanged (repair never changes a plan that passes).
3. Failed: rank the nodes still in FP16 by the error each adds on its own
   (:func:`fp16guard.verify.attribute.local_errors`: the node in FP16 storage on exact FP32
   inputs against FP32) and pin the worst ``k`` to FP32; ``k`` starts at ``ceil(n/64)`` of the
   ``n`` FP16 nodes and doubles every iteration, so the whole model is covered in a bounded
   number of steps. A pinned node whose error mostly remains when it alone is FP32 (it comes
   from reading FP16-stored activations, e.g. a subtraction of two nearly equal large values)
   pins the producers of those activations too. Rebuild, re-check, repeat.
4. Stop when the gate passes, or the budget (``repair_max_iterations`` checks after the first,
   ``repair_max_seconds``: no new iteration starts after it) is spent. When every node that can
   be FP32 is FP32 and the check still fails, the FP32 model itself does not meet the gate
   against itself on this data (non-determinism or a non-finite reference): that is said so.

Nodes matched by ``force_fp16_nodes`` are never pinned. Every iteration is recorded in the
plan's :class:`~fp16guard.plan.records.RepairRecord`; pinned nodes join ``fp32_nodes`` with
reason ``repair_precision`` and a sentence giving their local error.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Sequence

import onnx

from fp16guard.graph.info import fp16_slots, opset_map, tensor_types
from fp16guard.io.shards import ShardRef, peek_shard
from fp16guard.plan.records import Plan, PlanEntry, RepairRecord, RepairStep
from fp16guard.settings import PlanSettings, VerifySettings

__all__ = ["REPAIR_REASON", "repair_plan", "calibration_slice"]

#: Reason code of the nodes that repair pins.
REPAIR_REASON = "repair_precision"
#: A pinned node whose error is at least this share due to reading FP16-stored activations
#: (``LocalError.input_error``) also pins the producers of those activations.
INPUT_SHARE = 0.5


def calibration_slice(shards: Sequence[ShardRef], samples: int) -> list[ShardRef]:
    """The first shards that together hold at least ``samples`` samples (read from the headers)."""
    picked: list[ShardRef] = []
    total = 0
    for ref in shards:
        picked.append(ref)
        layout = peek_shard(ref)
        total += max((shape[0] for _, shape in layout.values() if shape), default=1)
        if total >= samples:
            break
    return picked


def _check(model: onnx.ModelProto, fp32: set[str], shards: Sequence[ShardRef], settings: VerifySettings, batch_size: int | None) -> dict:
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.verify.compare import verify

    candidate = to_mixed_precision(model, fp32, check=False)
    return verify(model, candidate, shards, settings, batch_size=batch_size, providers=None, emulate=True)


def _worst(report: dict) -> tuple[float | None, int]:
    rels = [o.get("max_rel_error") for o in report.get("outputs", {}).values() if isinstance(o, dict) and o.get("kind") != "exact"]
    nonfinite = sum(int(o.get("nonfinite") or 0) for o in report.get("outputs", {}).values() if isinstance(o, dict))
    if nonfinite or any(r is None for r in rels):
        return None, nonfinite
    return (max(rels) if rels else 0.0), 0


def repair_plan(
    model: onnx.ModelProto,
    plan: Plan,
    calibration: Sequence[ShardRef],
    settings: PlanSettings,
    verify_settings: VerifySettings,
    batch_size: int | None = None,
) -> Plan:
    """Check ``plan`` on calibration data and, if it fails, pin nodes until it passes.

    Args:
        model: the FP32 model with its weights loaded (not modified).
        plan: the rule-based plan (not modified).
        calibration: calibration shards; the first ``settings.repair_samples`` samples are used.
        settings: ``repair``, ``repair_max_iterations``, ``repair_max_seconds``,
            ``repair_samples``, ``force_fp16_nodes``.
        verify_settings: the numeric gate (the same one the holdout verification uses).
        batch_size: samples per inference call.

    Returns:
        A new plan: the same FP32 set when the plan passed (or repair is off), else with the
        pinned nodes added; ``repair`` records what happened.
    """
    started = time.monotonic()
    if not settings.repair or not calibration:
        why = "repair is off (plan.repair = false)" if not settings.repair else "no calibration data to check on"
        return replace(plan, repair=RepairRecord("skipped", why))
    from fp16guard.verify.attribute import local_errors

    shards = calibration_slice(calibration, settings.repair_samples)
    samples = settings.repair_samples
    fp32 = set(plan.fp32_names)
    forced16 = {f.name for f in plan.forced_fp16 if f.applied}
    types, opsets = tensor_types(model), opset_map(model)
    eligible = [n.name for n in model.graph.node if fp16_slots(n, opsets, types).status == "fp16" and n.name not in forced16]
    eligible_set = set(eligible)
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n.name for n in model.graph.node for o in n.output if o}
    entries = list(plan.fp32_nodes)
    steps: list[RepairStep] = []
    k = 0
    iteration = 0
    outcome, message = "budget_spent", ""
    used = 0
    while True:
        t0 = time.monotonic()
        report = _check(model, fp32, shards, verify_settings, batch_size)
        used = int(report.get("samples") or 0)
        worst, nonfinite = _worst(report)
        step = dict(iteration=iteration, fp32_nodes=len(fp32), passed=bool(report["passed"]), worst_rel_error=worst, nonfinite=nonfinite, reason=str(report.get("reason") or "passed"))
        if report["passed"]:
            steps.append(RepairStep(**step, seconds=round(time.monotonic() - t0, 3)))
            outcome = "unchanged" if iteration == 0 else "repaired"
            break
        candidates = [n for n in eligible if n not in fp32]
        if not candidates:
            steps.append(RepairStep(**step, seconds=round(time.monotonic() - t0, 3)))
            outcome = "fp32_fails"
            message = (
                f"every node that can be FP32 is FP32 and the candidate still fails on calibration data ({step['reason']}): "
                "the FP32 model does not reproduce itself on this data, so no plan can pass"
            )
            break
        if iteration >= settings.repair_max_iterations or time.monotonic() - started >= settings.repair_max_seconds:
            steps.append(RepairStep(**step, seconds=round(time.monotonic() - t0, 3)))
            spent = "iterations" if iteration >= settings.repair_max_iterations else "seconds"
            message = f"still failing after {iteration} repair iteration(s) and {time.monotonic() - started:.0f} s (budget of {spent} spent): {step['reason']}"
            break
        ranked = local_errors(model, candidates, shards, samples, batch_size)
        k = max(1, math.ceil(len(candidates) / 64)) if k == 0 else k * 2
        added: list[dict] = []

        def pin(name: str, local: float | None, why: str, trigger: str) -> None:
            fp32.add(name)
            node = nodes[name]
            added.append({"name": name, "op_type": node.op_type, "local_error": local, "why": why})
            entries.append(PlanEntry(
                name=name, op_type=node.op_type, inputs=tuple(i for i in node.input if i), outputs=tuple(o for o in node.output if o),
                reason=REPAIR_REASON, reasons=(REPAIR_REASON,), details=(why,), triggers=(trigger,),
            ))

        for rank, err in enumerate(ranked[:k], 1):
            if err.node in fp32:
                continue  # already pinned as the producer of a node ranked above
            shown = "inf (not finite)" if math.isinf(err.rel_error) else f"{err.rel_error:.3g}"
            local = None if math.isinf(err.rel_error) else err.rel_error
            pin(err.node, local, f"in FP16 on exact FP32 inputs, output {err.output!r} is {shown} of its max |x| off FP32 (rank {rank} of {len(ranked)}, repair iteration {iteration + 1})", err.output)
            if err.input_error >= INPUT_SHARE * err.rel_error and err.input_error > 0:
                # Most of its error comes from reading FP16-stored activations: their producers go FP32 too.
                for name in nodes[err.node].input:
                    producer = producers.get(name)
                    if producer is not None and producer in eligible_set and producer not in fp32:
                        pin(producer, None, f"produces {name!r}, which {err.node!r} reads: stored in FP16 it leaves {err.input_error:.3g} of relative error in {err.node!r} even in FP32 (repair iteration {iteration + 1})", name)
        steps.append(RepairStep(**step, seconds=round(time.monotonic() - t0, 3), added=tuple(added)))
        iteration += 1

    order = {n.name: i for i, n in enumerate(model.graph.node)}
    entries.sort(key=lambda e: order.get(e.name, -1))
    total = round(time.monotonic() - started, 3)
    if outcome == "unchanged":
        message = f"the rule-based plan passes the gate on {used} calibration samples; nothing to repair"
    elif outcome == "repaired":
        message = f"{len(fp32) - len(plan.fp32_names)} node(s) pinned to FP32 in {iteration} iteration(s), {total:.1f} s; the plan now passes on {used} calibration samples"
        if eligible_set <= fp32:
            message += "; every node that could run in FP16 is now FP32, so this build gains nothing from FP16 at this gate"
    counts = dict(plan.counts)
    if counts:
        moved = len(fp32) - len(plan.fp32_names)
        counts["fp32"] = counts.get("fp32", 0) + moved
        counts["fp16"] = counts.get("fp16", 0) - moved
    record = RepairRecord(outcome, message, samples=used, seconds=total, steps=tuple(steps))
    return replace(plan, fp32_nodes=entries, counts=counts, repair=record)
