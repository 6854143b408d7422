"""Integer conversion rule: float values turned into integers must be exact integers.

FP16 has an 11-bit significand, so it holds every integer only up to 2**11 = 2048; beyond that
its spacing is 2, 4, 8... A ``Cast`` from float to an integer type (a dynamically quantised
model's ``*_quantized_node`` Casts, index and size arithmetic done in float) that reads values
above 2048 gets a different integer when the value was stored in FP16 — an error that no
floating-point error bound sees (an integer output then mismatches FP32, or a quantisation
scale is off). Found on a dynamically quantised CRNN (ddddocr): after repair pinned 199 nodes,
the only FP16 nodes left were 13 such Casts reading |x| up to 4467.

``integer_conversion`` keeps FP32 such a Cast *and* the producer of the float tensor it reads
(the producer's output is what gets stored in FP16). Casts to ``bool`` are left alone (only
zero vs non-zero matters there).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from fp16guard.plan.rule import Finding, PlanContext

__all__ = ["IntegerConversionRule", "FP16_EXACT_INTEGERS"]

#: Largest magnitude below which FP16 holds every integer exactly (2**11).
FP16_EXACT_INTEGERS = 2048.0

_INTEGER_TYPES = {
    TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
    TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64,
}


def _casts_to_integer(node: onnx.NodeProto) -> bool:
    if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
        return False
    return any(a.name == "to" and a.i in _INTEGER_TYPES for a in node.attribute)


class IntegerConversionRule:
    """Keeps FP32 the float→integer Casts that read values above 2048, and their producers."""

    codes = ("integer_conversion",)
    structural = False

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        wide = ctx.memo(("integer_conversion", "wide"), lambda: _wide_cast_inputs(ctx))
        out: list[Finding] = []
        if _casts_to_integer(node) and node.input and node.input[0] in wide:
            name = node.input[0]
            out.append(Finding("integer_conversion", f"casts {name!r} (max |x| = {wide[name]:.6g}) to integers; FP16 holds integers exactly only up to 2048", (name,)))
        for name in node.output:
            if name in wide:
                out.append(Finding("integer_conversion", f"output {name!r} (max |x| = {wide[name]:.6g}) is cast to integers; FP16 holds integers exactly only up to 2048", (name,)))
        return out


def _wide_cast_inputs(ctx: PlanContext) -> dict[str, float]:
    """Float tensors read by a float→integer Cast whose measured max |x| exceeds 2048."""
    wide: dict[str, float] = {}
    for node in ctx.model.graph.node:
        if not _casts_to_integer(node) or not node.input:
            continue
        stats = ctx.stats(node.input[0])
        if stats is not None and stats.max_abs is not None and stats.max_abs > FP16_EXACT_INTEGERS:
            wide[node.input[0]] = float(stats.max_abs)
    return wide
