"""User rule: nodes the user asked to keep FP32.

* ``forced_name`` — the node name matches ``force_fp32_nodes`` (``re.search``).
* ``forced_op_type`` — the op type is in ``force_fp32_ops``.

``force_fp16_nodes`` can override these (it is applied by the planner, over every rule that is
not structural).
"""

from __future__ import annotations

import onnx

from fp16guard.plan.rule import Finding, PlanContext

__all__ = ["UserOverridesRule"]


class UserOverridesRule:
    """Keeps FP32 the nodes named by ``force_fp32_nodes`` / ``force_fp32_ops``."""

    codes = ("forced_name", "forced_op_type")
    structural = False

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        out: list[Finding] = []
        pattern = ctx.settings.force_fp32_nodes
        if pattern and ctx.regex(pattern).search(node.name):
            out.append(Finding("forced_name", f"name {node.name!r} matches force_fp32_nodes {pattern!r}"))
        if node.op_type in ctx.settings.force_fp32_ops:
            out.append(Finding("forced_op_type", f"op type {node.op_type} is in force_fp32_ops"))
        return out
