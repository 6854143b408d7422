"""Structural rule: nodes that cannot be built in FP16 at all, and subgraph nodes by default.

Codes (from :func:`fp16guard.graph.info.fp16_slots`), in priority order:

* ``has_subgraph`` — If/Loop/Scan: their bodies' tensors are not measured, so nothing says
  whether FP16 holds their values. Unlike the other codes this one is a default, not a limit:
  the conversion can run such a node in FP16 (bodies included), and repair overrules the code
  when the calibration check passes with the node in FP16 (``RETURNABLE`` in
  :mod:`fp16guard.plan.repair`). A subgraph node outside the default domain cannot be converted
  at all (``fp16_slots`` status ``has_subgraph``).
* ``custom_domain`` — op outside the default ONNX domain (no schema to trust).
* ``unknown_type`` — touches a value whose tensor type is unknown (sequence, optional, untyped),
  or a subgraph node whose body declares an input or output without a tensor element type.
* ``no_fp16_kernel`` — the op schema at the model's opset does not allow float16 for a FLOAT
  input/output (``onnx.defs.get_schema`` type constraints).

Structural: ``force_fp16_nodes`` cannot override these.
"""

from __future__ import annotations

import onnx

from fp16guard.graph.info import subgraphs
from fp16guard.plan.rule import Finding, PlanContext

__all__ = ["StructuralRule"]


class StructuralRule:
    """Keeps FP32 every node whose FP16 status from ``fp16_slots`` is an FP32 code, and every
    subgraph node that could run in FP16 (``has_subgraph``, overruled by a passing check)."""

    codes = ("has_subgraph", "custom_domain", "unknown_type", "no_fp16_kernel")
    structural = True

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        slots = ctx.slots(node)
        if slots.status in self.codes:
            return [Finding(slots.status, slots.detail)]
        if slots.status == "fp16" and subgraphs(node):
            return [Finding(
                "has_subgraph",
                f"{node.op_type} holds subgraphs whose tensors are not measured: FP32 unless the calibration check passes with it (bodies included) in FP16",
            )]
        return []
