"""Repair: the smallest FP32 set by cost that passes the gate on calibration data.

A strategy applied after the rules (:func:`fp16guard.plan.planner.make_plan`). The rules see
overflow and underflow; they cannot see precision loss without either, nor whether an underflow
they flag changes the result. The search measures both, on a **calibration** slice (the first
``repair_samples`` samples) through FP16 storage emulation, with the user's gate — every output
judged by the metric its user chose (:class:`fp16guard.verify.metrics.Gate`). The holdout is never
touched: it stays the independent final check.

The search is split the way Polygraphy's ``debug precision`` is: an injected checker
(:class:`~fp16guard.plan.search.checker.CalibrationChecker`: build, run, judge, memoised) and two
policies (:class:`~fp16guard.plan.search.grow.AttributionGrowth`,
:class:`~fp16guard.plan.search.shrink.CostDdmin`), driven by the short loop below:

1. **All-FP16 first.** Only what cannot or must not be FP16 stays FP32 (structural nodes,
   user-forced ones, weights FP16 cannot store); when that build is *accepted* it is the plan —
   a plan never costs more than the all-FP16 build plus the Casts it needs. A candidate is
   accepted when it passes the user's gate with the headroom unseen data need: its worst
   calibration error times a statistical margin from how the error varies across calibration
   samples (:mod:`fp16guard.plan.search.margin`: 1 where the error is even, up to 2 where one
   sample dominates; or the user's fixed ``repair_margin``). The rules' guards for unseen data
   (:data:`GUARDS`: values above the range threshold, masked non-finite values, integer Casts
   past 2048) are overruled only here.
2. **The rules' plan** (when it differs): accepted, go to 4.
3. **Grow** by attribution until a candidate is accepted. The batch pinned per step grows only
   when the last step did not pay.
4. **Shrink**: give FP32 nodes that the data decided (:data:`RETURNABLE`: repair's pins,
   underflow pins) back to FP16,
   costliest first in halving chunks (:mod:`fp16guard.plan.search.shrink`), keeping each chunk
   whose candidate is still accepted, until no single node can go back or ``shrink_max_checks``
   is spent.
5. Cost-aware islands (:func:`fp16guard.plan.strategies.islands.merge_islands`) are recomputed
   for the final set when the plan had them.

**Checks fan out, decisions stay in order** (``repair_parallel`` > 1,
:mod:`fp16guard.plan.search.speculate`): the all-FP16 build and the rules' plan are checked at
once, and the shrink phase checks the candidates its policy may ask for next (both halves of a
bisection, the step after an acceptance) on an executor, while the loop consumes the results in
its sequential order: the FP32 set, the steps and the plan are those of ``repair_parallel = 1``.
Checks run ahead and never consumed are counted (``speculative``), not recorded as steps. Growth
stays one check at a time: each step's pins are traced from the check before it.

Every check is a step of the plan's :class:`~fp16guard.plan.records.RepairRecord` (phase, FP32
set size and FLOP share, score and margin, nodes added or given back, seconds); the record says
how stable the final plan is across calibration subsets (``stability``). Budget:
``repair_max_iterations`` growth steps, ``repair_max_seconds`` for the whole search (no new check
starts after it), ``shrink_max_checks``. Nodes matched by ``force_fp16_nodes`` are never pinned.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from typing import Callable, Sequence

import onnx

from fp16guard.graph.info import fp16_slots, opset_map, tensor_types
from fp16guard.io.shards import ShardRef, header_samples, peek_shard
from fp16guard.plan.records import Plan, PlanEntry, RepairRecord, RepairStep
from fp16guard.plan.search.checker import CalibrationChecker, Check
from fp16guard.plan.search.grow import CARRY, INPUT_SHARE, AttributionGrowth, Pin, fp16_upstream, trace_sources
from fp16guard.plan.search.shrink import CostDdmin
from fp16guard.plan.search.speculate import CheckPool, lookahead
from fp16guard.settings import PlanSettings, VerifySettings
from fp16guard.verify.metrics import Gate

__all__ = [
    "GUARDS", "REPAIR_REASON", "RETURNABLE", "INPUT_SHARE", "CARRY", "repair_plan", "calibration_slice", "tightened", "trace_sources", "fp16_upstream",
]

#: Reason code of the nodes that repair pins.
REPAIR_REASON = "repair_precision"
#: Reasons the shrink phase can overrule: FP32 nodes whose every reason is here go back to FP16
#: when the candidate is still accepted (an underflowing LayerNorm epsilon that changes nothing).
RETURNABLE = frozenset({REPAIR_REASON, "initializer_underflow", "activation_underflow", "has_subgraph"})
#: Reasons that guard unseen data (values near FP16's range, masked non-finite values, integers
#: past 2048): a passing all-FP16 build overrules them, the shrink phase does not. Any reason
#: in neither set (structural, user-forced, weights FP16 cannot store) is never overruled.
GUARDS = frozenset({"input_above_threshold", "output_above_threshold", "no_statistics", "masked_nonfinite", "integer_conversion"})
#: Fewer calibration slices than this and the record warns that the margin is a guess (real
#: detectors calibrated on 4 pages passed their search and failed holdout).
MIN_SLICES_TRUSTED = 8
#: Cost-aware islands: FP16 runs squeezed between FP32 nodes, moved for speed. Dropped with the
#: guards when the all-FP16 build passes; otherwise kept (they also keep the FP16 rounding of
#: those runs out) and recomputed around the final set.
_ISLAND = "cost_island"


def calibration_slice(shards: Sequence[ShardRef], samples: int) -> list[ShardRef]:
    """The first shards that together hold at least ``samples`` samples (read from the headers)."""
    picked: list[ShardRef] = []
    total = 0
    for ref in shards:
        picked.append(ref)
        total += header_samples(ref)
        if total >= samples:
            break
    return picked


def tightened(gate: VerifySettings | Gate, margin: float) -> Gate:
    """``gate`` with every tolerance scaled by ``margin`` (0 < margin <= 1), every per-output
    gate kept (an output under a top-1 gate stays under a stricter top-1 gate)."""
    return Gate.from_settings(gate).tightened(margin)


def _costs(model: onnx.ModelProto, shards: Sequence[ShardRef]) -> dict[str, float]:
    from fp16guard.plan.cost import node_costs

    shapes = {name: shape for name, (_, shape) in peek_shard(shards[0]).items()} if shards else None
    return {name: c.flops for name, c in node_costs(model, shapes).items()}


class _Search:
    """The loop's state: the current FP32 set, its entries, the steps taken, the budget."""

    def __init__(self, model: onnx.ModelProto, plan: Plan, checker: CalibrationChecker, pool: CheckPool, settings: PlanSettings, costs: dict[str, float], started: float, on_step: Callable[[RepairStep], None] | None = None) -> None:
        # Every result the loop decides on comes through ``pool``, in the loop's order.
        self.model, self.checker, self.pool, self.settings, self.costs, self.started, self.on_step = model, checker, pool, settings, costs, started, on_step
        self.nodes = {n.name: n for n in model.graph.node}
        self.total_cost = sum(costs.values()) or 1.0
        self.entries = {e.name: e for e in plan.fp32_nodes}
        self.steps: list[RepairStep] = []

    def share(self, fp32: frozenset[str] | set[str]) -> float:
        return round(sum(self.costs.get(n, 0.0) for n in fp32) / self.total_cost, 6)

    def out_of_time(self) -> bool:
        return time.monotonic() - self.started >= self.settings.repair_max_seconds

    def record(self, phase: str, check: Check, added: list[Pin] = (), removed: Sequence[str] = ()) -> None:
        score = None if check.score == float("inf") else round(check.score, 6)
        self.steps.append(RepairStep(
            iteration=len(self.steps), fp32_nodes=len(check.fp32), passed=check.passed, worst_rel_error=check.worst_rel_error,
            nonfinite=check.nonfinite, reason=check.reason, seconds=check.seconds,
            added=tuple(self._added(p) for p in added),
            phase=phase, removed=tuple(removed), score=score, inflation=round(check.spread.inflation, 4), accepted=check.accepted,
            fp32_flops_share=self.share(check.fp32),
        ))
        if self.on_step is not None:
            self.on_step(self.steps[-1])

    def _added(self, p: Pin) -> dict:
        return {"name": p.name, "op_type": self.nodes[p.name].op_type, "local_error": p.local_error, "why": p.why}

    def pin(self, p: Pin) -> None:
        node = self.nodes[p.name]
        self.entries[p.name] = PlanEntry(
            name=p.name, op_type=node.op_type, inputs=tuple(i for i in node.input if i), outputs=tuple(o for o in node.output if o),
            reason=REPAIR_REASON, reasons=(REPAIR_REASON,), details=(p.why,), triggers=(p.trigger,),
        )

    def grow(self, current: frozenset[str], last: Check, eligible: Sequence[str], forced16: set[str], shards: Sequence[ShardRef], gate: Gate) -> tuple[frozenset[str], Check, str, str]:
        """Pin nodes by attribution from the failing set ``current`` (last checked: ``last``)
        until a candidate is accepted or the budget is spent.

        Returns:
            ``(FP32 set, its check, outcome, message)``; outcome ``repaired``, ``budget_spent``,
            ``stuck`` or ``fp32_fails`` (the message is set for all but ``repaired``).
        """
        # Outputs above the numeric tolerance, less the headroom, are the ones traced.
        target = getattr(gate.default, "max_rel_error", 0.0) / last.spread.inflation
        policy = AttributionGrowth(self.model, eligible, shards, self.checker.samples, self.checker.batch_size, target)
        previous: Check | None = None
        iteration = 0
        while True:
            left = [n for n in eligible if n not in current]
            if not left:
                if forced16:
                    return current, last, "stuck", f"every other node is FP32 and the candidate still fails on calibration data ({last.reason}): the {len(forced16)} node(s) forced to FP16 (force_fp16_nodes) keep it from passing"
                return current, last, "fp32_fails", (
                    f"every node that can be FP32 is FP32 and the candidate still fails on calibration data ({last.reason}): "
                    "the FP32 model does not reproduce itself on this data, so no plan can pass"
                )
            if iteration >= self.settings.repair_max_iterations or self.out_of_time():
                spent = "iterations" if iteration >= self.settings.repair_max_iterations else "seconds"
                return current, last, "budget_spent", f"still failing after {iteration} repair iteration(s) and {time.monotonic() - self.started:.0f} s (budget of {spent} spent): {last.reason}"
            pins = policy.propose(set(current), last, previous, f"repair iteration {iteration + 1}")
            # The pins belong to the step whose check failed (they were chosen from it).
            self.steps[-1] = replace(self.steps[-1], added=tuple(self._added(p) for p in pins))
            if not pins:
                return current, last, "stuck", f"the remaining error could not be traced to any node left in FP16 ({last.reason}); {len(left)} node(s) stay FP16"
            for p in pins:
                self.pin(p)
            current = current | {p.name for p in pins}
            previous, last = last, self.pool.check(current)
            iteration += 1
            self.record("grow", last)
            if last.accepted:
                return current, last, "repaired", ""

    def shrink(self, fp32: frozenset[str], returnable: Sequence[str]) -> frozenset[str]:
        """Give ``returnable`` nodes of the accepted set ``fp32`` back to FP16 while accepted."""
        policy = CostDdmin(list(returnable), self.costs)
        tried = accepted = 0
        while tried < self.settings.shrink_max_checks and not self.out_of_time():
            if self.pool.ahead:
                # Start what the policy may ask for next (what it asks for now first); the
                # acceptance rate so far weighs the two outcomes of each unknown candidate.
                self.pool.prefetch(lookahead(policy, fp32, self.pool.parallel, self.pool.outcome, (accepted + 1) / (tried + 2)))
            chunk = policy.next_chunk()
            if chunk is None:
                break
            trial = fp32 - set(chunk)
            fresh = not self.pool.known(trial)
            check = self.pool.check(trial)
            if fresh:
                tried += 1
                accepted += check.accepted
                self.record("shrink", check, removed=chunk)
            policy.feedback(check.accepted)
            if check.accepted:
                fp32 = trial
        return fp32


def repair_plan(
    model: onnx.ModelProto,
    plan: Plan,
    calibration: Sequence[ShardRef],
    settings: PlanSettings,
    verify_settings: VerifySettings | Gate,
    batch_size: int | None = None,
    on_step: Callable[[RepairStep], None] | None = None,
    executor: Executor | None = None,
    threads: int = 0,
) -> Plan:
    """Search for the smallest FP32 set by cost that passes the gate on calibration data.

    Args:
        model: the FP32 model the plan is for, weights loaded (not modified).
        plan: the rule-based plan (not modified).
        calibration: calibration shards; the first ``settings.repair_samples`` samples are used.
        settings: ``repair``, ``repair_max_iterations``, ``repair_max_seconds``,
            ``repair_samples``, ``repair_margin``, ``shrink_max_checks``, ``force_fp16_nodes``,
            ``repair_parallel`` (checks in flight at once; the plan is the same for any value).
        verify_settings: the gate (the same one the holdout verification uses).
        batch_size: largest samples per inference call.
        on_step: called with each check's :class:`RepairStep` as soon as it is made (progress
            for people: a long search says which phase and check it is in), in the search's
            order, from the calling thread.
        executor: runs checks ahead of need when ``settings.repair_parallel`` > 1: an in-process
            ``concurrent.futures.Executor`` (threads; not shut down here). None: a
            ``ThreadPoolExecutor`` of ``repair_parallel`` threads, made and shut down here.
        threads: onnxruntime intra-op threads of every check's session (0: onnxruntime's
            choice). The same for any ``repair_parallel``: onnxruntime's results depend on it in
            the last bits, and the plan must not depend on the parallelism.

    Returns:
        A new plan with the FP32 set found; ``repair`` records every check (see the module
        docstring). The rule-based plan unchanged when repair is off or cannot run.
    """
    started = time.monotonic()
    if not settings.repair or not calibration:
        why = "repair is off (plan.repair = false)" if not settings.repair else "no calibration data to check on"
        return replace(plan, repair=RepairRecord("skipped", why))
    from fp16guard.io.model import PROTOBUF_LIMIT

    if model.ByteSize() >= PROTOBUF_LIMIT:
        # Candidates are handed to onnxruntime in memory, which protobuf caps at 2 GB.
        return replace(plan, repair=RepairRecord("skipped", "the model is 2 GB or larger: repair builds candidates in memory, which protobuf cannot hold; the holdout check still applies"))

    shards = calibration_slice(calibration, settings.repair_samples)
    gate = Gate.from_settings(verify_settings)
    forced16 = {f.name for f in plan.forced_fp16 if f.applied}
    types, opsets = tensor_types(model), opset_map(model)
    eligible = [n.name for n in model.graph.node if fp16_slots(n, opsets, types).status == "fp16" and n.name not in forced16]
    eligible_set = set(eligible)
    costs = _costs(model, shards)

    parallel = settings.repair_parallel
    with ExitStack() as stack:
        # Checks at once: idle onnxruntime threads must not spin on the cores the others need.
        checker = stack.enter_context(CalibrationChecker(model, shards, gate, batch_size, settings.repair_margin, threads, spinning=parallel <= 1))
        if parallel > 1 and executor is None:
            executor = stack.enter_context(ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="fp16guard-check"))
        # Entered last, left first: checks still running stop before the checker closes.
        pool = stack.enter_context(CheckPool(checker, executor, parallel))
        s = _Search(model, plan, checker, pool, settings, costs, started, on_step)
        rules = frozenset(s.entries)
        reasons = {n: set(e.reasons or (e.reason,)) for n, e in s.entries.items()}
        fixed = frozenset(n for n, r in reasons.items() if not r <= RETURNABLE | GUARDS | {_ISLAND})
        floor = frozenset(n for n, r in reasons.items() if not r <= RETURNABLE)
        outcome, message = "budget_spent", ""

        # 1. The all-FP16 build (only what cannot or must not be FP16 stays FP32): when it is
        #    accepted, it is the plan.
        if rules != fixed:
            pool.prefetch([fixed, rules])  # the rules' plan is checked next when all-FP16 fails
        first = pool.check(fixed)
        s.record("all_fp16", first)
        current, last = fixed, first
        if first.accepted:
            outcome = "unchanged" if rules == fixed else "all_fp16"
        else:
            # 2. The rules' plan.
            if rules != fixed:
                last = pool.check(rules)
                s.record("rules", last)
                current = rules
            if last.accepted:
                outcome = "unchanged"
            else:
                # 3. Grow by attribution until accepted (passes with the margin unseen data need).
                current, last, outcome, message = s.grow(current, last, eligible, forced16, shards, gate)

        # 4. Shrink: give back to FP16 what the data decided, while the candidate stays accepted.
        # In graph order: the policy sorts by cost, and ties must not follow set iteration order
        # (string hashes differ from process to process).
        returnable = [n for n in eligible if n in current and n not in floor]
        returned: tuple[str, ...] = ()
        if outcome in ("repaired", "unchanged") and returnable and settings.shrink_max_checks > 0:
            # Each trial must be accepted too (the gate with headroom): what goes back to FP16
            # must earn it.
            current = s.shrink(current, returnable)
            returned = tuple(n for n in returnable if n not in current)
            if returned and outcome == "unchanged":
                outcome = "shrunk"
        final = pool.check(current)
        pool.close()  # stop what still runs ahead before counting it
        n_checks, speculative = pool.checks, pool.speculative

    entries = [e for n, e in s.entries.items() if n in current]
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    entries.sort(key=lambda e: order.get(e.name, -1))
    total = round(time.monotonic() - started, 3)
    share = s.share(current)
    pct = f"{100 * share:.3g}% of the estimated FLOPs in FP32"
    used = checker.samples
    if outcome == "unchanged":
        message = f"the rule-based plan passes the gate on {used} calibration samples ({len(current)} FP32 node(s), {pct}); nothing could go back to FP16"
    elif outcome == "all_fp16":
        message = f"the all-FP16 build passes the gate on {used} calibration samples: {len(rules - fixed)} rule-pinned node(s) were not needed; {len(current)} node(s) stay FP32 because they cannot or must not run in FP16 ({pct})"
    elif outcome == "shrunk":
        message = f"the rule-based plan passes on {used} calibration samples; {len(returned)} of its node(s) went back to FP16 in {len(s.steps) - 1} check(s): {len(current)} FP32 node(s), {pct}"
    elif outcome == "repaired":
        grown = sum(1 for st in s.steps if st.phase == "grow")
        message = f"{len(current - rules)} node(s) pinned to FP32 in {grown} iteration(s), {len(returned)} given back by the shrink phase, {total:.1f} s; the plan now passes on {used} calibration samples with {len(current)} FP32 node(s), {pct}"
        if eligible_set <= current:
            message += "; every node that could run in FP16 is now FP32, so this build gains nothing from FP16 at this gate"
    if outcome in ("budget_spent", "stuck", "fp32_fails") and first.suggested_gates:
        # The numeric gate could not be met, but the all-FP16 build agrees by task: say which
        # gate would pass, so the user can choose it knowingly.
        message += "; the all-FP16 build on calibration data: " + "; ".join(g["sentence"] for g in first.suggested_gates)
    if final.spread.slices < MIN_SLICES_TRUSTED and outcome not in ("skipped",):
        # Few samples: the margin is a guess, and many checks on the same few samples fit them.
        message += f"; the statistical margin rests on {final.spread.slices} calibration slice(s): give at least {MIN_SLICES_TRUSTED} samples for a margin unseen data can rely on"
    stability = {**final.spread.to_dict(), "score": None if final.score == float("inf") else round(final.score, 6), "bound": None if final.bound == float("inf") else round(final.bound, 6)}
    counts = dict(plan.counts)
    if counts:
        moved = len(current) - len(rules)
        counts["fp32"] = counts.get("fp32", 0) + moved
        counts["fp16"] = counts.get("fp16", 0) - moved
    record = RepairRecord(
        outcome, message, samples=used, seconds=total, steps=tuple(s.steps), checks=n_checks, returned=returned, stability=stability, fp32_flops_share=share,
        parallel=parallel, speculative=speculative,
    )
    result = replace(plan, fp32_nodes=entries, counts=counts, repair=record)
    if "islands" in plan.extra:
        # Islands follow the final set: cheap FP16 runs squeezed between its FP32 nodes.
        from fp16guard.plan.strategies.islands import merge_islands

        kept = [r for r in plan.extra.get("islands") or [] if set(r.get("nodes") or ()) <= current]
        data = merge_islands(model, result.to_dict())
        result = Plan.from_dict({**data, "islands": kept + list(data.get("islands") or [])})
    return result
