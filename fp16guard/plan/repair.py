"""Automatic repair: pin the nodes where FP16 error comes from until the plan passes the gate.

A strategy applied after the rules (:func:`fp16guard.plan.planner.make_plan`). The rules see
overflow and underflow; they cannot see precision loss without either (cancellation of nearly
equal large numbers, long sums, a softmax over thousands of classes). Repair measures it:

1. Build the plan's candidate and check it against FP32 on a **calibration** slice (the first
   ``repair_samples`` samples), through FP16 storage emulation, with the user's verification gate.
   The holdout is never touched: it stays the independent final check. Once repair pins nodes,
   later checks aim at the gate tightened by ``repair_margin`` (:func:`tightened`): a plan that
   only just passes on calibration data often fails on unseen data.
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

__all__ = ["REPAIR_REASON", "INPUT_SHARE", "CARRY", "repair_plan", "calibration_slice", "tightened", "trace_sources", "fp16_upstream"]

#: Reason code of the nodes that repair pins.
REPAIR_REASON = "repair_precision"
#: A pinned node whose error is at least this share due to reading FP16-stored activations
#: (``LocalError.input_error``) also pins the producers of those activations.
INPUT_SHARE = 0.5
#: An input carries a node's error when its relative error is at least this share of the output's
#: (:func:`trace_sources`).
CARRY = 0.25


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


def tightened(gate: VerifySettings, margin: float) -> VerifySettings:
    """``gate`` with every tolerance scaled by ``margin`` (0 < margin <= 1): the target repair
    aims at once it pins nodes (``max_rel_error * margin``, ``1 - (1 - min_cosine) * margin``,
    ``max_mismatch_fraction * margin``)."""
    return VerifySettings(
        max_rel_error=gate.max_rel_error * margin,
        min_cosine=1.0 - (1.0 - gate.min_cosine) * margin,
        max_mismatch_fraction=gate.max_mismatch_fraction * margin,
    )


def _fmt(value: float) -> str:
    return "inf (not finite)" if math.isinf(value) else f"{value:.3g}"


def trace_sources(model: onnx.ModelProto, errors: dict[str, float], start: Sequence[str], carry: float = CARRY) -> list[tuple[str, str, float]]:
    """Follow the error from ``start`` tensors upstream to the nodes where it appears.

    A node's input *carries* the error when its relative error is at least ``carry`` times the
    output's; the walk continues through carriers. A node none of whose inputs carries its
    output's error is a **source**: the error appears there.

    Returns:
        ``(node, output tensor, relative error of that output)`` per source, largest error first.
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    found: dict[str, tuple[str, float]] = {}
    seen: set[str] = set()
    stack = list(start)
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor not in producers:
            continue
        seen.add(tensor)
        node = producers[tensor]
        out = errors.get(tensor, 0.0)
        if out <= 0:
            continue
        carriers = [i for i in node.input if errors.get(i, 0.0) > 0 and errors[i] >= carry * out]
        if carriers:
            stack.extend(carriers)
        elif out > found.get(node.name, ("", -1.0))[1]:
            found[node.name] = (tensor, out)
    return sorted(((n, t, e) for n, (t, e) in found.items()), key=lambda s: -s[2])


def fp16_upstream(model: onnx.ModelProto, node_name: str, errors: dict[str, float], fp32: set[str], eligible: set[str], limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` FP16 nodes upstream of ``node_name``, nearest first, along tensors that
    carry any error or are not float (breadth-first, through FP32 nodes and FP16 ones alike).

    Returns ``(producer, tensor it feeds on the way)`` pairs.
    """
    from collections import deque

    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n.name for n in model.graph.node for o in n.output if o}
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    def carries(tensor: str) -> bool:
        # Float tensors carry error when measured off FP32; integer ones (the uint8 of a dynamic
        # quantisation, a shape) are not measured and are followed: their values may have moved.
        return errors.get(tensor, 0.0) > 0 or tensor not in errors

    queue = deque(i for i in nodes[node_name].input if i and carries(i))
    while queue and len(found) < limit:
        tensor = queue.popleft()
        if tensor in seen or tensor not in producers:
            continue
        seen.add(tensor)
        producer = producers[tensor]
        if producer in eligible and producer not in fp32:
            found.append((producer, tensor))
        queue.extend(i for i in nodes[producer].input if i and carries(i))
    return found


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
            ``repair_samples``, ``repair_margin``, ``force_fp16_nodes``.
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
    from fp16guard.io.model import PROTOBUF_LIMIT
    from fp16guard.verify.attribute import global_errors, local_errors

    if model.ByteSize() >= PROTOBUF_LIMIT:
        # Candidates are handed to onnxruntime in memory, which protobuf caps at 2 GB.
        return replace(plan, repair=RepairRecord("skipped", "the model is 2 GB or larger: repair builds candidates in memory, which protobuf cannot hold; the holdout check still applies"))

    shards = calibration_slice(calibration, settings.repair_samples)
    target = tightened(verify_settings, settings.repair_margin)
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
        # The first check uses the user's gate (a plan that passes is never changed); once nodes
        # are being pinned, aim at the tighter target so that unseen holdout data passes too.
        report = _check(model, fp32, shards, verify_settings if iteration == 0 else target, batch_size)
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
            if forced16:
                outcome = "stuck"
                message = f"every other node is FP32 and the candidate still fails on calibration data ({step['reason']}): the {len(forced16)} node(s) forced to FP16 (force_fp16_nodes) keep it from passing"
            else:
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
        k = max(1, math.ceil(len(candidates) / 64)) if k == 0 else k * 2
        added: list[dict] = []
        tag = f"repair iteration {iteration + 1}"

        def pin(name: str, local: float | None, why: str, trigger: str) -> None:
            fp32.add(name)
            node = nodes[name]
            added.append({"name": name, "op_type": node.op_type, "local_error": local, "why": why})
            entries.append(PlanEntry(
                name=name, op_type=node.op_type, inputs=tuple(i for i in node.input if i), outputs=tuple(o for o in node.output if o),
                reason=REPAIR_REASON, reasons=(REPAIR_REASON,), details=(why,), triggers=(trigger,),
            ))

        # 1. Where does the error that reaches the failing outputs appear? (side-by-side run)
        errors = global_errors(model, fp32, shards, samples, batch_size)
        outputs = [o.name for o in model.graph.output if o.name in errors]
        failing = [o for o in outputs if errors[o] > target.max_rel_error] or [o for o in outputs if errors[o] > 0]
        sources = trace_sources(model, errors, failing)[:k]
        fp16_sources = [name for name, _, _ in sources if name in eligible_set and name not in fp32]
        local = {e.node: e for e in local_errors(model, fp16_sources, shards, samples, batch_size)} if fp16_sources else {}
        for name, tensor, err in sources:
            shown = _fmt(err)
            if name in eligible_set and name not in fp32:
                le = local.get(name)
                pin(name, None if le is None or math.isinf(le.rel_error) else le.rel_error,
                    f"the FP16 error reaching the failing outputs appears at its output {tensor!r} ({shown} of its max |x|; its inputs carry little) ({tag})", tensor)
                if le is not None and le.input_error > 0 and le.input_error >= INPUT_SHARE * le.rel_error:
                    # Most of its error comes from reading FP16-stored activations: their producers go FP32 too.
                    for t in nodes[name].input:
                        producer = producers.get(t)
                        if producer in eligible_set and producer not in fp32:
                            pin(producer, None, f"produces {t!r}, which {name!r} reads: stored in FP16 it leaves {le.input_error:.3g} of relative error in {name!r} even in FP32 ({tag})", t)
            else:
                # The error appears at a node that is FP32 already (or cannot be FP16): it amplifies
                # the rounding of what it reads (log of tiny values, a division by a small difference).
                # Pin up to k FP16 nodes upstream of it, nearest first (k grows geometrically).
                for producer, t in fp16_upstream(model, name, errors, fp32, eligible_set, k):
                    if producer not in fp32:
                        pin(producer, None, f"feeds {t!r} to {name!r} (FP32), whose output {tensor!r} is {shown} off FP32: {name!r} amplifies the FP16 rounding of what it reads ({tag})", t)
        if not added:
            # Nothing traced to an FP16 node: fall back to the nodes with the largest local error.
            for rank, err in enumerate(local_errors(model, candidates, shards, samples, batch_size)[:k], 1):
                if err.node not in fp32:
                    pin(err.node, None if math.isinf(err.rel_error) else err.rel_error,
                        f"in FP16 on exact FP32 inputs, output {err.output!r} is {_fmt(err.rel_error)} of its max |x| off FP32 (rank {rank} by local error, {tag})", err.output)
        steps.append(RepairStep(**step, seconds=round(time.monotonic() - t0, 3), added=tuple(added)))
        iteration += 1
        if not added:
            outcome = "stuck"
            message = f"the remaining error could not be traced to any node left in FP16 ({step['reason']}); {len(candidates)} node(s) stay FP16"
            break

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
