"""Stored-value range rule: weights and constants FP16 cannot hold (docs/FP16.md).

* ``initializer_out_of_range`` — the node reads a float initializer with some |x| > 65504.
* ``constant_out_of_range`` — the node is, or reads the output of, a Constant/ConstantOfShape
  whose value has some |x| > 65504.

An initializer whose external data cannot be read gives ``no_statistics`` (its range is unknown).
Converters that clamp such values silently change the model, so the readers stay FP32 instead.
"""

from __future__ import annotations

import onnx

from fp16guard import FP16_MAX
from fp16guard.plan.rule import Finding, PlanContext

__all__ = ["InitializerRangeRule"]


class InitializerRangeRule:
    """Keeps FP32 the readers of float initializers and constants beyond FP16's range."""

    codes = ("initializer_out_of_range", "constant_out_of_range")
    structural = False

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        out: list[Finding] = []
        for name in node.output:
            if name in ctx.constants:
                value = ctx.constant_values(name)
                if value is not None and value.max_abs > FP16_MAX:
                    out.append(Finding("constant_out_of_range", f"its value has max |x| = {value.max_abs:.6g} > 65504 (FP16 max)", (name,)))
        for name in ctx.inputs(node):
            if name in ctx.initializers:
                value = ctx.initializer_values(name)
                if value is None:
                    out.append(Finding("no_statistics", f"initializer {name!r} has external data that could not be read (pass weights_dir); its range is unknown", (name,)))
                elif value.max_abs > FP16_MAX:
                    out.append(Finding("initializer_out_of_range", f"initializer {name!r} has max |x| = {value.max_abs:.6g} > 65504 (FP16 max)", (name,)))
            elif name in ctx.constants:
                value = ctx.constant_values(name)
                if value is not None and value.max_abs > FP16_MAX:
                    out.append(Finding("constant_out_of_range", f"input {name!r} is a constant with max |x| = {value.max_abs:.6g} > 65504 (FP16 max)", (name,)))
        return out
