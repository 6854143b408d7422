"""Stored-value underflow rule: weights and constants that vanish in FP16 (docs/FP16.md).

``initializer_underflow`` keeps FP32:

* a Constant node whose float value underflows, and every node that reads a float initializer
  or constant whose values underflow;
* the readers of those nodes' float outputs (one step further): a constant below FP16's range
  is typically an epsilon that guards the next op (``Log``, ``Div``, ``Sqrt``, ``Reciprocal``)
  against zero, and the guarded sum is tiny exactly where the epsilon matters. Computing
  ``x*x + 1e-10`` in FP32 does not help when ``Log`` then reads it in FP16 as 0.

A stored value **underflows** when it has non-zero values and either all of them lose most of
their bits in FP16 (|x| < 2**-19 ≈ 1.9e-6, where FP16's subnormals keep at most 5 of 11
significant bits; an epsilon of 1e-10 becomes 0), or more than :data:`MASS_FRACTION` of its
non-zero magnitude (sum of |x|) does. A subnormal that keeps most of its bits (a LayerNorm
epsilon of 1e-5 is stored within 0.3%) is not flagged, nor is a weight matrix with a few tiny
elements among many normal ones: they lose nothing that matters. Only FLOAT (FP32) values are judged: FLOAT16 values are already FP16 and DOUBLE ones are
not converted.
"""

from __future__ import annotations

import onnx

from fp16guard.plan.rule import Finding, PlanContext
from fp16guard.plan.values import FP16_LOSSY, ValueSummary

__all__ = ["InitializerUnderflowRule", "MASS_FRACTION", "underflows"]

#: A stored tensor whose non-zero magnitude lies more than this fraction below FP16's normal
#: range underflows as a whole.
MASS_FRACTION = 0.5


def underflows(value: ValueSummary | None) -> bool:
    """True when the stored value's non-zero content is (mostly) below FP16's normal range."""
    if value is None or value.nonzero == 0:
        return False
    return value.lossy == value.nonzero or value.lossy_abs_sum > MASS_FRACTION * value.abs_sum


def _describe(kind: str, name: str, value: ValueSummary) -> str:
    if value.lossy == value.nonzero:
        what = f"all {value.nonzero} non-zero values below {FP16_LOSSY:.2g}, deep in FP16's subnormal range (max |x| = {value.max_abs:.3g}), where at most 5 of 11 bits survive"
    else:
        what = f"{value.lossy_abs_sum / value.abs_sum:.0%} of its non-zero magnitude below {FP16_LOSSY:.2g}, where FP16 keeps at most 5 of 11 bits"
    gone = f"; {value.flushed} become 0 in FP16" if value.flushed else ""
    return f"{kind} {name!r} has {what}{gone}"


class InitializerUnderflowRule:
    """Keeps FP32 the readers of underflowing stored values, and the readers of their outputs."""

    codes = ("initializer_underflow",)
    structural = False

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        out = [Finding("initializer_underflow", sentence, (name,)) for name, sentence in _direct(node, ctx)]
        for name in ctx.inputs(node):
            producer = ctx.producers.get(name)
            if producer is None or producer.op_type in ("Constant", "ConstantOfShape"):
                continue
            guarded = _direct(producer, ctx)
            if guarded:
                sources = ", ".join(repr(s) for s, _ in guarded)
                out.append(Finding("initializer_underflow", f"input {name!r} comes from {producer.name!r}, which reads {sources} below FP16's range: it is tiny where that value matters", (name,)))
        return out


def _direct(node: onnx.NodeProto, ctx: PlanContext) -> list[tuple[str, str]]:
    """(stored tensor, sentence) for every underflowing FLOAT value ``node`` is or reads (cached)."""

    def compute() -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for name in node.output:
            if name in ctx.constants and ctx.types.is_float32(name):
                value = ctx.constant_values(name)
                if underflows(value):
                    found.append((name, "its value: " + _describe("constant", name, value)))
        for name in ctx.inputs(node):
            if not ctx.types.is_float32(name):
                continue
            if name in ctx.initializers:
                value = ctx.initializer_values(name)
                if underflows(value):
                    found.append((name, _describe("initializer", name, value)))
            elif name in ctx.constants:
                value = ctx.constant_values(name)
                if underflows(value):
                    found.append((name, _describe("input constant", name, value)))
        return found

    return ctx.memo(("initializer_underflow", id(node)), compute)
