"""Activation underflow rule: measured tensors whose content lies below FP16's normal range.

``activation_underflow`` keeps FP32 every node that reads or writes a FLOAT activation (graph
input or node output, measured by the statistics pass) which **underflows**: more than
:data:`MASS_FRACTION` of its magnitude (sum of |x| over the elements the statistics pass
examined: a strided sample of each tensor on each call, docs/NUMERICS.md) lies in non-zero values
below FP16's smallest normal 2**-14 ≈ 6.10e-5. Those values keep fewer than 11 bits in FP16
(subnormals) or become 0 (|x| <= 2**-25); when they carry most of the tensor, FP16 storage
changes the tensor as a whole (``x*x`` of small features, a variance of tiny activations, a
flat softmax over a very large vocabulary), and the op that reads it (``Log``, ``Div``,
``Sqrt``, a normalisation) turns the lost bits into a large error or inf. Both sides must be
FP32: an FP32 reader still sees what an FP16 producer stored, and an FP32 producer's output
is stored in FP16 when its reader is FP16.

Why the magnitude share and not only the count of small values: the error FP16 adds to an
underflowing element is at most its own |x|, so the share bounds the relative (L1) change of the
tensor. A tensor with many tiny values beside large ones (a peaked softmax over 6625 classes,
the near-zero tail of any activation) loses almost nothing and stays FP16: those models already
verify with the range rule, and this rule leaves their plans unchanged. Because each small value
is below 2**-14 and each other non-zero value at least 2**-14, a share above one half also means
that more than half of the non-zero values are below FP16's normal range. The same share is used
for stored values by :mod:`.initializer_underflow`.

Tensors whose statistics lack the underflow columns (files from before them, opsets below 10,
a shard where the tensor held NaN/inf) are unknown, and unknown is not a finding. Outputs of
Constant/ConstantOfShape nodes are left to :mod:`.initializer_underflow`, which reads their values.
"""

from __future__ import annotations

import onnx

from fp16guard.plan.rule import Finding, PlanContext, TensorStats

__all__ = ["ActivationUnderflowRule", "MASS_FRACTION", "FP16_MIN_NORMAL", "underflows"]

#: An activation whose magnitude lies more than this fraction in non-zero values below FP16's
#: normal range underflows.
MASS_FRACTION = 0.5
#: FP16's smallest positive normal value (2**-14).
FP16_MIN_NORMAL = 2.0**-14


def underflows(stats: TensorStats) -> bool:
    """True when the measured tensor's magnitude lies mostly below FP16's normal range; False
    when it does not or when the figures are unknown."""
    abs_sum = stats.get("abs_sum")
    small = stats.get("subnormal_abs_sum")
    if abs_sum is None or small is None or not abs_sum > 0:
        return False
    return small > MASS_FRACTION * abs_sum


def _describe(role: str, name: str, stats: TensorStats) -> str:
    share = stats.get("subnormal_abs_sum") / stats.get("abs_sum")
    counts = ""
    if stats.get("nonzero") is not None and stats.get("subnormal") is not None:
        counts = f" ({stats.get('subnormal')} of {stats.get('nonzero')} non-zero values"
        smallest = stats.get("min_nonzero_abs")
        counts += f", smallest |x| = {smallest:.3g})" if smallest is not None else ")"
    return f"{role} {name!r} has {share:.0%} of its magnitude below FP16's smallest normal {FP16_MIN_NORMAL:.3g}{counts}"


class ActivationUnderflowRule:
    """Keeps FP32 the nodes that read or write an activation lying mostly below FP16's range."""

    codes = ("activation_underflow",)
    structural = False

    def findings(self, node: onnx.NodeProto, ctx: PlanContext) -> list[Finding]:
        out: list[Finding] = []
        roles = [("input", n) for n in ctx.inputs(node)] + [("output", n) for n in node.output if n]
        for role, name in roles:
            if name in ctx.initializers or name in ctx.constants or not ctx.types.is_float32(name):
                continue
            stats = ctx.stats(name)
            if stats is not None and underflows(stats):
                out.append(Finding("activation_underflow", _describe(role, name, stats), (name,)))
        return out
