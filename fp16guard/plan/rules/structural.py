"""Structural rule: nodes that cannot be built in FP16 at all.

Codes (from :func:`fp16guard.graph.info.fp16_slots`), in priority order:

* ``has_subgraph`` — If/Loop/Scan: their subgraphs are not instrumented.
* ``custom_domain`` — op outside the default ONNX domain (no schema to trust).
* ``unknown_type`` — touches a value whose tensor type is unknown (sequence, optional, untyped).
* ``no_fp16_kernel`` — the op schema at the model's opset does not allow float16 for a FLOAT
  input/output (``onnx.defs.get_schema`` type constraints).

Structural: ``force_fp16_nodes`` cannot override these.
"""

from __future__ import annotations

import onnx

from fp16guard.plan.rule import Finding, PlanContext

__all__ = ["StructuralRule"]


class StructuralRule:
    """Keeps FP32 every node whose FP16 status from ``fp16_slots`` is an FP32 code."""

    codes = ("has_subgraph", "custom_domain", "unknown_type", "no_fp16_kernel")
    structural = True

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        slots = ctx.slots(node)
        if slots.status in self.codes:
            return [Finding(slots.status, slots.detail)]
        return []
