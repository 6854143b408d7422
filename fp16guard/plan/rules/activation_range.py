"""Activation range rule: tensors measured above the threshold, or not measured at all.

* ``input_above_threshold`` — some float input has max |x| > threshold (or non-finite values).
  This is what the "pin the producer" recipe lacks: Softmax over large logits, the Sqrt of a
  mean of squares, or the layer after a large activation has a small output but would read its
  large input as inf in FP16 (docs/FP16.md).
* ``output_above_threshold`` — some float output has max |x| > threshold (or non-finite values).
* ``no_statistics`` — touches a FLOAT tensor (graph input or node output) that has no row in the
  statistics, so nothing is known about its range.

Initializers are not activations: :mod:`.initializer_range` judges them from their values.
"""

from __future__ import annotations

import onnx

from fp16guard.plan.rule import Finding, PlanContext, describe_range, out_of_range

__all__ = ["ActivationRangeRule"]


class ActivationRangeRule:
    """Keeps FP32 the nodes with a float input or output above the threshold or unmeasured."""

    codes = ("input_above_threshold", "output_above_threshold", "no_statistics")
    structural = False

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        out: list[Finding] = []
        for name in ctx.inputs(node):
            if name not in ctx.initializers:
                out.extend(self._judge("input", name, ctx))
        for name in node.output:
            if name:
                out.extend(self._judge("output", name, ctx))
        return out

    @staticmethod
    def _judge(role: str, name: str, ctx: PlanContext) -> list[Finding]:
        stats = ctx.stats(name)
        if stats is not None:
            if out_of_range(stats, ctx.threshold):
                return [Finding(f"{role}_above_threshold", f"{role} {name!r} has {describe_range(stats)} > threshold {ctx.threshold:g}", (name,))]
            return []
        if ctx.types.is_float32(name):
            return [Finding("no_statistics", f"{role} {name!r} is float but has no statistics", (name,))]
        return []
