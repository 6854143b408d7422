"""Decide which nodes stay in FP32 (the content of ``plan.json``).

A node of the main graph is in one of three groups:

* **FP32** — some rule keeps it in FP32 (listed in ``fp32_nodes`` with a reason);
* **FP16** — it touches FLOAT tensors and no rule applies;
* **neutral** — it touches no FLOAT tensor (integer/bool ops, or ops already in FP16/FP64), or it
  reads only the shape of its float input (Shape, Size): precision does not apply to it.

The rules are the modules of :mod:`fp16guard.plan.rules`, applied in the order of
:data:`~fp16guard.plan.rules.DEFAULT_RULES` (see :mod:`fp16guard.plan.rule` for the contract and
how to add one). Their reason codes, in the order used to pick the primary ``reason``:

* structural (:mod:`~fp16guard.plan.rules.structural`), which nothing overrides:
  ``has_subgraph``, ``custom_domain``, ``unknown_type``, ``no_fp16_kernel``;
* user-forced (:mod:`~fp16guard.plan.rules.user_overrides`): ``forced_name``, ``forced_op_type``;
* stored values (:mod:`~fp16guard.plan.rules.initializer_range`): ``initializer_out_of_range``,
  ``constant_out_of_range``;
* activations (:mod:`~fp16guard.plan.rules.activation_range`): ``input_above_threshold``,
  ``output_above_threshold``, ``no_statistics``;
* then the codes of any rule registered after these.

``details`` lists every finding as a sentence with tensor names and values; ``triggers`` names
the tensors involved.

``force_fp16_nodes`` (``re.search`` on the node name) moves a node to FP16 over every rule that
is not structural; each such node is recorded in ``forced_fp16`` with the rules it overrode. Over
a structural rule it has no effect (recorded with ``applied: false``).
"""

from __future__ import annotations

import os
from typing import Sequence

import onnx
import pyarrow as pa

from fp16guard.plan.records import ForcedFP16, Plan, PlanEntry
from fp16guard.plan.rule import Finding, PlanContext, Rule
from fp16guard.plan.rules import DEFAULT_RULES, reason_codes, structural_codes
from fp16guard.settings import PlanSettings

__all__ = ["REASONS", "STRUCTURAL", "Plan", "PlanEntry", "make_plan"]

#: Structural reason codes of the default rules (``force_fp16_nodes`` cannot override them).
STRUCTURAL = structural_codes(DEFAULT_RULES)
#: Every reason code of the default rules, in priority order.
REASONS = reason_codes(DEFAULT_RULES)


def make_plan(
    model: onnx.ModelProto,
    stats: pa.Table,
    settings: PlanSettings,
    weights_dir: str | os.PathLike | None = None,
    rules: Sequence[Rule] = DEFAULT_RULES,
) -> Plan:
    """Apply ``rules`` to every node of the main graph (see the module docstring).

    Args:
        model: the FP32 model (node names normalised by :func:`fp16guard.io.model.load_model`).
        stats: reduced statistics, one row per float tensor; ``tensor``, ``max_abs`` and
            ``nonfinite`` are required, other columns are offered to the rules.
        settings: threshold and user overrides.
        weights_dir: folder of the model file, to read external-data initializers that are not
            loaded (``load_model(path, load_weights=False)``); default None. An initializer whose
            values cannot be read keeps its readers FP32 (``no_statistics``).
        rules: the rules, in priority order (default :data:`~fp16guard.plan.rules.DEFAULT_RULES`).

    Returns:
        The plan. Node order in ``fp32_nodes`` follows the graph.

    Raises:
        DataError: the statistics table lacks a required column.
    """
    ctx = PlanContext(model, stats, settings, weights_dir)
    priority = {code: i for i, code in enumerate(reason_codes(rules))}
    structural = set(structural_codes(rules))
    fp16_re = ctx.regex(settings.force_fp16_nodes) if settings.force_fp16_nodes else None

    plan = Plan(threshold=ctx.threshold)
    counts = {"nodes": len(model.graph.node), "fp32": 0, "fp16": 0, "neutral": 0}
    for node in model.graph.node:
        if ctx.slots(node).status in ("no_float", "neutral"):
            counts["neutral"] += 1
            continue
        found: list[Finding] = [f for rule in rules for f in rule.findings(node, ctx)]
        codes = sorted({f.code for f in found}, key=lambda c: priority.get(c, len(priority)))
        forced = bool(fp16_re and fp16_re.search(node.name))
        if forced:
            blocked = [c for c in codes if c in structural]
            plan.forced_fp16.append(
                ForcedFP16(node.name, node.op_type, applied=not blocked, overridden=() if blocked else tuple(codes), details=tuple(f.sentence for f in found))
            )
            if not blocked:
                counts["fp16"] += 1
                continue
        if not codes:
            counts["fp16"] += 1
            continue
        counts["fp32"] += 1
        plan.fp32_nodes.append(
            PlanEntry(
                name=node.name,
                op_type=node.op_type,
                inputs=tuple(ctx.inputs(node)),
                outputs=tuple(o for o in node.output if o),
                reason=codes[0],
                reasons=tuple(codes),
                details=tuple(f.sentence for f in found),
                triggers=tuple(dict.fromkeys(t for f in found for t in f.tensors)),
            )
        )
    plan.counts = counts
    return plan
