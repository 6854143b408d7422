"""Choosing the exponents: :func:`solve_scales` (see :mod:`fp16guard.graph.fold_scales`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Mapping

import numpy as np
import onnx

from fp16guard.errors import ModelError
from fp16guard.graph.scales.guards import FP16_MIN_NORMAL, NEGLIGIBLE_BIAS, faithful, rescaled_constant
from fp16guard.graph.scales.kinds import LINEAR_OPS, MAX_EXPONENT, SCALED_ATTRS, NodeKind, ScaleGraph, TensorRange, classify, node_attr

__all__ = ["MIN_SCALED_MAX", "MIN_SCALED_MEAN", "ScaleSolution", "solve_scales", "param_factors"]

#: Without a smallest-|x| statistic, a scaled tensor's max |x| must stay at least this (see the
#: module docstring: keeps values down to max_abs * 2**-14 in FP16's normal range).
MIN_SCALED_MAX = 1.0
#: With a mean |x| statistic, a scaled tensor's mean |x| must stay at least this: values far below
#: the mean may then become subnormal, but their absolute error (at most 2**-25 in scaled units)
#: stays below 2**-21 of a typical value — far below FP16's own rounding of it (2**-12).
MIN_SCALED_MEAN = 2.0**-4


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclass


class ScaleSolution:
    """Exponents chosen for a model, and why (``plan.json``'s ``folding`` record).

    Attributes:
        exponents: tensor -> exponent, only where it is not 0.
        regions: one dict per class of tensors that needed a scale: ``tensors`` (how many),
            ``first``/``last`` (names, graph order), ``exponent``, ``scale`` (2**exponent),
            ``status`` (``folded`` or ``refused``), ``why`` (a sentence).
        notes: sentences about nodes whose scale could not be folded (weights, constants).
        dropped_biases: one dict per Conv/Gemm/MatMul whose folded bias is negligible and set to
            0 (``node``, ``bias``, ``bias_max_abs``, ``output_mean_abs``, ``exponent``):
            :func:`apply_scales` needs the node names (``drop_biases``).
    """

    exponents: dict[str, int] = field(default_factory=dict)
    regions: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped_biases: list[dict] = field(default_factory=list)


def _need(r: TensorRange | None, threshold: float) -> int | None:
    """Smallest exponent bringing ``r.max_abs`` to at most ``threshold``; None when unknown."""
    if r is None or r.nonfinite or not math.isfinite(r.max_abs):
        return None
    if r.max_abs <= threshold:
        return 0
    return int(math.ceil(math.log2(r.max_abs / threshold)))


def _allowed(r: TensorRange | None) -> int:
    """Largest exponent the underflow guard allows for this tensor (0 when unknown): by its mean
    |x| (:data:`MIN_SCALED_MEAN`) when the statistics have one, else by its smallest non-zero |x|
    (which must stay FP16-normal; one tiny element then decides), else by its max |x|
    (:data:`MIN_SCALED_MAX`)."""
    if r is None or r.nonfinite or not math.isfinite(r.max_abs):
        return 0
    if r.mean_abs is not None and math.isfinite(r.mean_abs) and r.mean_abs > 0:
        return max(0, int(math.floor(math.log2(r.mean_abs / MIN_SCALED_MEAN))))
    if r.smallest is not None and math.isfinite(r.smallest) and r.smallest > 0:
        return max(0, int(math.floor(math.log2(r.smallest / FP16_MIN_NORMAL))))
    if r.max_abs <= 0:
        return MAX_EXPONENT  # all zeros: any scale keeps them exactly
    return max(0, int(math.floor(math.log2(r.max_abs / MIN_SCALED_MAX))))


def solve_scales(model: onnx.ModelProto, ranges: Mapping[str, TensorRange], threshold: float) -> ScaleSolution:
    """Choose an exponent for every FLOAT activation (see the module docstring).

    Args:
        model: the FP32 model (BatchNormalization already folded, weights loaded).
        ranges: statistics per tensor name.
        threshold: the plan threshold: scaled max |x| should stay at or below it.

    Returns:
        The exponents (for :func:`apply_scales`) and the regions with their reasons.
    """
    g = ScaleGraph(model)
    nodes = list(model.graph.node)
    kinds = [classify(n, g) for n in nodes]
    uf = _UnionFind()
    order: dict[str, int] = {}
    for v in model.graph.input:
        if g.is_act(v.name):
            uf.find(v.name)
            order.setdefault(v.name, len(order))
    produced: dict[str, str] = {}  # tensor -> kind of the node that makes it
    skipped: dict[str, list[str]] = {}  # join output -> operands it reads through a converter
    for node, k in zip(nodes, kinds):
        for o in k.outs:
            uf.find(o)
            order.setdefault(o, len(order))
            produced[o] = k.kind
        if k.kind in ("pass", "join"):
            carry = k.carry
            if k.kind == "join" and k.outs:
                # A residual stream (a skip operand made by pass/join ops) grows block by block;
                # one exponent for the whole stream would have to suit its smallest and its
                # largest values at once. The join shares its scale with the operands a weight
                # or product makes; a skip operand gets an exact power-of-two converter.
                scaled = tuple(t for t in carry if produced.get(t) in ("rescale", "derived"))
                if scaled and len(scaled) < len(carry):
                    skipped[k.outs[0]] = [t for t in carry if t not in scaled]
                    carry = scaled
            for t in carry:
                for o in k.outs:
                    uf.union(t, o)
            for t in carry[1:]:
                uf.union(carry[0], t)
    members: dict[str, list[str]] = {}
    for t in sorted(order, key=order.get):
        members.setdefault(uf.find(t), []).append(t)
    # Skip operands are read at their join's exponent: they count for its range and guard.
    extras: dict[str, list[str]] = {}
    for out, skips in skipped.items():
        extras.setdefault(uf.find(out), []).extend(skips)

    allowed_of = {root: min(min(_allowed(ranges.get(t)) for t in names + extras.get(root, [])), MAX_EXPONENT) for root, names in members.items()}
    needs_of: dict[str, int | None] = {}
    for root, names in members.items():
        needs = [_need(ranges.get(t), threshold) for t in names + extras.get(root, [])]
        needs_of[root] = None if any(n is None for n in needs) else max(needs)
    # A product or power needs its factors scaled: x**2 overflowing needs x / 2**(n/2). Pushed
    # from the outputs back (reverse graph order), so chains such as Sqrt(Mean(Pow(x, 2))) reach
    # the rescale point that can provide it; never beyond what a factor's underflow guard allows.
    pushed: dict[str, str] = {}
    for node, k in reversed(list(zip(nodes, kinds))):
        total = sum(k.degree, Fraction(0))
        if k.kind != "derived" or total <= 0 or not k.outs:
            continue
        out_need = needs_of.get(uf.find(k.outs[0]))
        if not out_need:
            continue
        required = math.ceil(out_need / total)
        for t in k.carry:
            root = uf.find(t)
            if needs_of.get(root) is not None and needs_of[root] < required <= allowed_of[root]:
                needs_of[root] = required
                pushed[root] = f"{node.op_type} {node.name!r} reads it and needs 2**{out_need} on its output"

    class_exp: dict[str, int] = {}
    solution = ScaleSolution()
    for root, names in members.items():
        need = needs_of[root]
        if need == 0:
            class_exp[root] = 0
            continue
        class_exp[root] = 0
        region = {"tensors": len(names), "first": names[0], "last": names[-1]}
        if need is None:
            unknown = next(t for t in names + extras.get(root, []) if _need(ranges.get(t), threshold) is None)
            solution.regions.append({**region, "exponent": 0, "scale": 1, "status": "refused", "why": f"tensor {unknown!r} has no finite statistics: its scale cannot be chosen"})
            continue
        worst = max(names, key=lambda t: ranges[t].max_abs)
        peak = ranges[worst].max_abs
        cause = pushed.get(root) or f"max |x| = {peak:.6g} at {worst!r} > threshold {threshold:g}"
        allowed = allowed_of[root]
        if need > MAX_EXPONENT:
            why = f"{cause}: needs 2**{need}, beyond the largest folded scale 2**{MAX_EXPONENT}"
            solution.regions.append({**region, "exponent": 0, "scale": 1, "status": "refused", "why": why})
            continue
        if need > allowed:
            low = min(names + extras.get(root, []), key=lambda t: _allowed(ranges.get(t)))
            why = f"{cause}: needs 2**{need}, but {low!r} would sink below FP16's normal range (underflow guard allows at most 2**{allowed})"
            solution.regions.append({**region, "exponent": 0, "scale": 1, "status": "refused", "why": why})
            continue
        class_exp[root] = need
        solution.regions.append({**region, "root": root, "exponent": need, "scale": 2**need, "status": "folded", "why": f"{cause}: stored divided by 2**{need}"})
    # A join and its skip operands share one exponent wherever both guards allow it (no
    # converter then): the larger of the two, in graph order so a stream's exponents rise block
    # by block; twice, so a raise reaches the joins before it. Where they cannot, the skip
    # operand is read through a converter.
    for _ in range(2):
        for out, skips in skipped.items():
            root = uf.find(out)
            if needs_of.get(root) is None:
                continue
            for t in skips:
                skip_root = uf.find(t)
                if needs_of.get(skip_root) is None:
                    continue
                target = max(class_exp.get(root, 0), class_exp.get(skip_root, 0))
                if target > class_exp.get(root, 0) and target <= allowed_of.get(root, 0):
                    _set_exponent(solution, members, class_exp, root, target, f"raised to 2**{target}, the exponent of the skip operand {t!r} it joins (no converter)")
                if target > class_exp.get(skip_root, 0) and target <= allowed_of.get(skip_root, 0):
                    _set_exponent(solution, members, class_exp, skip_root, target, f"raised to 2**{target}, the exponent of the join {out!r} it feeds (no converter)")
    _raise_for_weights(nodes, kinds, g, uf, members, class_exp, allowed_of, solution)

    e: dict[str, int] = {t: 0 for t in order}
    for node, k in zip(nodes, kinds):
        if not k.outs:
            continue
        root = uf.find(k.outs[0])
        out = 0
        if k.kind == "rescale":
            ex = e.get(k.carry[0], 0)
            out, dropped = _rescale_output(node, k, g, ex, class_exp.get(root, 0), ranges.get(k.outs[0]), solution.notes)
            if dropped:
                solution.dropped_biases.append(dropped)
        elif k.kind == "pass":
            out = min(e.get(k.carry[0], 0), allowed_of.get(root, 0))
            data = ranges.get(k.carry[0])
            if out and not _consts_ok(node, k, g, out, data.max_abs if data else None):
                out = 0
        elif k.kind == "join":
            skips = skipped.get(k.outs[0], [])
            sources = [t for t in k.carry if t not in skips]
            out = min(max(e.get(t, 0) for t in sources), allowed_of.get(root, 0))
            operand_max = max((ranges[t].max_abs for t in k.carry if t in ranges), default=None)
            if out and not _consts_ok(node, k, g, out, operand_max):
                solution.notes.append(f"{node.op_type} {node.name!r}: a constant operand cannot be divided by 2**{out} in FP16; the scale is restored before it")
                out = 0
        elif k.kind == "derived":
            value = sum((d * e.get(t, 0) for d, t in zip(k.degree, k.carry)), Fraction(0))
            if value.denominator == 1 and 0 <= value <= min(allowed_of.get(root, 0), MAX_EXPONENT):
                out = int(value)
                if out and k.consts and not _consts_ok(node, k, g, out, None):
                    out = 0
        for o in k.outs:
            e[o] = out
    solution.exponents = {t: v for t, v in e.items() if v}
    # A class gets its scale only from a rescale point (or a product of scaled factors) inside
    # it; one whose values all come from elsewhere stays unscaled: say so.
    for region in solution.regions:
        root = region.pop("root", None)
        if root is not None and not any(e.get(t) for t in members[root]):
            region.update(exponent=0, scale=1, status="unscaled")
            region["why"] += " — but no weight or scaled factor before it can carry the scale, so it stays unscaled and the rules decide"
    return solution


def _set_exponent(solution: ScaleSolution, members: dict[str, list[str]], class_exp: dict[str, int], root: str, exponent: int, why: str) -> None:
    """Give class ``root`` a larger exponent than its need and say why in its region record."""
    class_exp[root] = exponent
    region = next((r for r in solution.regions if r.get("root") == root), None)
    if region is not None:
        region.update(exponent=exponent, scale=2**exponent, why=region["why"] + f"; {why}")
    else:
        names = members[root]
        solution.regions.append({"tensors": len(names), "first": names[0], "last": names[-1], "root": root, "exponent": exponent, "scale": 2**exponent, "status": "folded", "why": why})


def _raise_for_weights(nodes, kinds, g: ScaleGraph, uf: _UnionFind, members: dict[str, list[str]], class_exp: dict[str, int], allowed_of: dict[str, int], solution: ScaleSolution) -> None:
    """Scale a rescale point's input more when its weights cannot take the whole step alone.

    A layer whose output needs 2**b while its input carries 2**a multiplies its weights by
    2**(a - b); a wide layer (VGG's 25088-input Gemm) can need a step that pushes its weights
    below FP16's normal range. Raising the input class's exponent (within its underflow guard)
    splits the step with the layer before. Visited in reverse graph order so raises chain back.
    Edits ``class_exp`` and the regions of ``solution`` in place.
    """
    for node, k in reversed(list(zip(nodes, kinds))):
        if k.kind != "rescale" or k.weight is None or not k.outs or not g.is_const(node.input[k.weight]):
            continue
        source, target = uf.find(k.carry[0]), uf.find(k.outs[0])
        a, b = class_exp.get(source, 0), class_exp.get(target, 0)
        weights = g.value(node.input[k.weight])
        ok = lambda ex: faithful(weights, (weights.astype(np.float64) * 2.0 ** (ex - b)).astype(np.float32))  # noqa: E731
        if b <= a or ok(a):
            continue
        raised = next((x for x in range(a + 1, min(b, allowed_of.get(source, 0)) + 1) if ok(x)), None)
        if raised is None:
            continue
        why = f"raised to 2**{raised} so that the weights of {node.op_type} {node.name!r} keep FP16 precision (they take 2**{raised - b} instead of 2**{a - b})"
        _set_exponent(solution, members, class_exp, source, raised, why)


def _rescale_output(node: onnx.NodeProto, k: NodeKind, g: ScaleGraph, ex: int, wanted: int, out_range: TensorRange | None, notes: list[str]) -> tuple[int, dict | None]:
    """The exponent a rescale point's output gets, and the bias it drops (or None).

    Tries ``wanted`` (the class's exponent), then ``ex`` (weights unchanged), then 0: the first
    at which every weight and bias stays faithful in FP16 — a bias that is not may be dropped
    when negligible (:data:`NEGLIGIBLE_BIAS`). When none works the output keeps ``ex`` and the
    plan's underflow rule judges the bias.
    """
    for eo in dict.fromkeys((wanted, ex, 0)):
        verdict = _params_verdict(node, k, g, ex, eo, out_range)
        if verdict is not None:
            if eo != wanted:
                notes.append(f"{node.op_type} {node.name!r}: its weights or bias cannot carry the factor 2**{ex - wanted} faithfully in FP16; its output gets scale 2**{eo}")
            return eo, verdict or None
    notes.append(f"{node.op_type} {node.name!r}: its bias cannot be divided by 2**{ex} faithfully in FP16; the rules judge it")
    return ex, None


def _params_verdict(node: onnx.NodeProto, k: NodeKind, g: ScaleGraph, ex: int, eo: int, out_range: TensorRange | None) -> dict | None:
    """None when the rescale point's weights or bias would lose precision at (ex, eo); ``{}``
    when all stay faithful; a dropped-bias record when only the bias fails and is negligible."""
    dropped: dict = {}
    try:
        for name, factor in param_factors(node, k, ex, eo):
            if factor == 1 or not g.is_const(name):
                continue
            value = g.value(name)
            if faithful(value, (value.astype(np.float64) * factor).astype(np.float32)):
                continue
            is_bias = node.op_type in LINEAR_OPS and 2 in k.consts and name == node.input[2]
            biggest = float(np.max(np.abs(value))) if value.size else 0.0
            mean = out_range.mean_abs if out_range is not None else None
            if not is_bias or mean is None or not math.isfinite(mean) or not biggest <= NEGLIGIBLE_BIAS * mean:
                return None
            dropped = {"node": node.name, "bias": name, "bias_max_abs": biggest, "output_mean_abs": mean, "exponent": eo}
    except ModelError:
        return None
    return dropped


def param_factors(node: onnx.NodeProto, k: NodeKind, ex: int, eo: int) -> list[tuple[str, float]]:
    """(constant input, factor it is multiplied by) for a rescale node going from ``ex`` to ``eo``."""
    if node.op_type == "BatchNormalization":
        scale, bias, mean, var = node.input[1:5]
        return [(scale, 2.0**-eo), (bias, 2.0**-eo), (mean, 2.0**-ex), (var, 4.0**-ex)]
    out = [(node.input[k.weight], 2.0 ** (ex - eo))]
    if 2 in k.consts:
        out.append((node.input[2], 2.0**-eo))
    return out


def _consts_ok(node: onnx.NodeProto, k: NodeKind, g: ScaleGraph, exponent: int, operand_max: float | None) -> bool:
    """Whether every scale-carrying constant of ``node`` can be divided by ``2**exponent`` (see
    :func:`rescaled_constant`; ``operand_max`` is the max |x| of the operand it is added to)."""
    for i in k.consts:
        if rescaled_constant(g.value(node.input[i]), exponent, operand_max) is None:
            return False
    for name in SCALED_ATTRS.get(node.op_type, ()):
        value = node_attr(node, name)
        if isinstance(value, float) and math.isfinite(value) and value != 0 and rescaled_constant(np.asarray(value, np.float32), exponent, None) is None:
            return False
    return True
