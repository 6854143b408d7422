"""Masked non-finite rule: activations that hold NaN/inf in FP32 although the outputs are finite.

``masked_nonfinite`` keeps FP32 every node that reads or writes a tensor in which the statistics
pass counted NaN/inf values (``nonfinite`` > 0). The statistics pass only accepts such values
when they never reach a graph output: the model masks them itself, as TensorFlow's
``div_no_nan`` does (``x / y``, then ``Where(y == 0, 0, x / y)``) or an additive ``-inf``
attention mask before Softmax. They are data, not bad input (docs/NUMERICS.md), but FP16 gives
no guarantee to preserve what the mask relies on (an inf that becomes NaN through a different
kernel order, a ``-inf + large`` that overflows elsewhere), so the nodes that touch them keep
the FP32 behaviour that was measured. The figures name the first shard where NaN/inf was seen.
"""

from __future__ import annotations

import onnx

from fp16guard.plan.rule import Finding, PlanContext

__all__ = ["MaskedNonfiniteRule"]


class MaskedNonfiniteRule:
    """Keeps FP32 the nodes that read or write a tensor holding NaN/inf in FP32."""

    codes = ("masked_nonfinite",)
    structural = False

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        out: list[Finding] = []
        roles = [("input", n) for n in ctx.inputs(node)] + [("output", n) for n in node.output if n]
        for role, name in roles:
            stats = ctx.stats(name) if name not in ctx.initializers else None
            if stats is None or stats.nonfinite <= 0:
                continue
            shard = stats.get("nonfinite_shard") or ""
            where = f", first on shard {shard}" if shard else ""
            out.append(Finding("masked_nonfinite", f"{role} {name!r} holds {stats.nonfinite} NaN/inf values in FP32{where}, masked before any graph output", (name,)))
        return out
