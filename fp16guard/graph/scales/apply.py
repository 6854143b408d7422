"""The folding pass proper: :func:`apply_scales` (see :mod:`fp16guard.graph.fold_scales` for its contract)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Collection, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fp16guard.errors import ModelError
from fp16guard.graph.constants import drop_unread_constants
from fp16guard.graph.info import NameAllocator, all_names, outer_refs, rename_outer_refs, subgraphs
from fp16guard.graph.scales.guards import rescaled_constant
from fp16guard.graph.scales.kinds import EPSILON_OPS, LINEAR_OPS, MAX_EXPONENT, SCALED_ATTRS, ScaleGraph, classify
from fp16guard.graph.scales.solve import param_factors
from fp16guard.io.model import PROTOBUF_LIMIT

__all__ = ["MAX_CONVERTER_STEP", "apply_scales"]

#: Largest scale-down of one converter Mul: its factor 2**-14 is FP16's smallest normal number.
MAX_CONVERTER_STEP = 14


def _requires(model: onnx.ModelProto, g: ScaleGraph, exponents: Mapping[str, int]) -> None:
    names = [n.name for n in model.graph.node]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ModelError("apply_scales needs unique, non-empty node names; expected a model loaded with fp16guard.io.model.load_model")
    for t, v in exponents.items():
        if not isinstance(v, int) or not 0 <= v <= MAX_EXPONENT:
            raise ModelError(f"exponent {v!r} of tensor {t!r} is not an integer in [0, {MAX_EXPONENT}]")
        if not g.is_act(t):
            raise ModelError(f"exponent given for {t!r}, which is not a FLOAT activation of the model (was the folding made for another model?)")


def _ensures(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    def io(m):
        return [(v.name, v.type.tensor_type.elem_type) for v in list(m.graph.input) + list(m.graph.output)]

    if io(before) != io(after):
        raise ModelError("apply_scales changed the graph inputs or outputs (a bug): expected them unchanged")
    if after.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(after, full_check=True)


@dataclass


class _Edits:
    """What :func:`apply_scales` added: converter outputs and renamed outputs, with their source."""

    #: new tensor -> (source tensor, exponent it carries)
    derived: dict[str, tuple[str, int]] = field(default_factory=dict)


def apply_scales(model: onnx.ModelProto, exponents: Mapping[str, int], drop_biases: Collection[str] = ()) -> tuple[onnx.ModelProto, dict[str, tuple[str, int]]]:
    """Fold ``exponents`` into ``model`` (see the module docstring for the contract).

    Args:
        model: the FP32 model (BatchNormalization folded as when the exponents were solved).
        exponents: tensor -> exponent (absent: 0), e.g. :attr:`ScaleSolution.exponents`.
        drop_biases: names of rescale nodes whose bias becomes 0 (the ``node`` of each
            :attr:`ScaleSolution.dropped_biases` record). Default: none.

    Returns:
        ``(folded_model, new_tensors)``: ``new_tensors`` maps every tensor the pass added to
        ``(source tensor, exponent it carries)``, so statistics can follow (:func:`scaled_stats`).

    Raises:
        ModelError: a pre- or post-condition fails.
    """
    g = ScaleGraph(model)
    _requires(model, g, exponents)
    unknown = sorted(set(drop_biases) - {n.name for n in model.graph.node if n.op_type in LINEAR_OPS and len(n.input) > 2 and g.is_const(n.input[2])})
    if unknown:
        raise ModelError(f"biases to drop name {unknown[:3]}, which are not Conv/Gemm/MatMul nodes with a constant bias in this model (was the folding made for another model?)")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    alloc = NameAllocator(all_names(model))
    nodes = list(graph.node)
    kinds = [classify(n, g) for n in nodes]
    e = lambda t: int(exponents.get(t, 0))  # noqa: E731
    edits = _Edits()
    new_inits: list[onnx.TensorProto] = []
    outputs = set(g.outputs)

    # Graph outputs that carry a scale are produced as <y>__scaled and restored under their name.
    renamed: dict[str, str] = {}
    for y in g.outputs:
        if e(y):
            renamed[y] = alloc.new(f"{y}__scaled")
            edits.derived[renamed[y]] = (y, e(y))
    versions: dict[tuple[str, int], str] = {}  # (tensor, exponent) -> tensor holding that version

    def current(t: str) -> str:
        return renamed.get(t, t)

    new_nodes: list[onnx.NodeProto] = []

    def version(t: str, r: int) -> str:
        """Name of ``t`` scaled to exponent ``r``, adding a converter Mul the first time."""
        have = e(t) if g.is_act(t) else 0
        if r == have:
            return current(t)
        key = (t, r)
        if key not in versions:
            if r == 0 and t in renamed:
                target = t  # the graph output itself, restored
            else:
                target = alloc.new(f"{t}__restored" if r == 0 else f"{t}__scale_e{r}")
                edits.derived[target] = (t, r)
            # A factor below 2**-14 would be a subnormal FP16 constant (real FP16 kernels do not
            # treat those as emulation does): such a scale-down is made of steps of 2**-14.
            source, at = current(t), have
            while r - at > MAX_CONVERTER_STEP:
                at += MAX_CONVERTER_STEP
                step = alloc.new(f"{t}__scale_e{at}")
                edits.derived[step] = (t, at)
                source = converter(source, MAX_CONVERTER_STEP, step)
            versions[key] = converter(source, r - at, target)
        return versions[key]

    def converter(source: str, down: int, target: str) -> str:
        """``target = source * 2**-down`` (one Mul, its factor an initializer); returns ``target``."""
        factor = alloc.new(f"{target}__factor")
        new_inits.append(numpy_helper.from_array(np.asarray(2.0 ** (-down), dtype=np.float32), factor))
        new_nodes.append(helper.make_node("Mul", [source, factor], [target], name=alloc.new(f"{target}__mul")))
        return target

    def const_input(node: onnx.NodeProto, i: int, exponent: int) -> None:
        # The solver already applied the epsilon rule with the operand's statistics; here the
        # same arithmetic is repeated (an infinite operand max admits the epsilon path).
        if exponent == 0:
            return
        name = node.input[i]
        value = rescaled_constant(g.value(name), exponent, math.inf)
        if value is None:
            raise ModelError(f"constant {name!r} of {node.name!r} cannot be divided by 2**{exponent} faithfully in FP16; the exponents were not made by solve_scales for this model")
        replace(node, i, value, f"{name}__div_e{exponent}")

    def multiplied(node: onnx.NodeProto, i: int, factor: float) -> None:
        if factor == 1.0:
            return
        name = node.input[i]
        replace(node, i, (g.value(name).astype(np.float64) * factor).astype(np.float32), f"{name}__fold")

    def replace(node: onnx.NodeProto, i: int, value: np.ndarray, base: str) -> None:
        """Make ``node`` read ``value`` at input ``i``: a new initializer, or a new fill node
        placed before ``node`` when the input was a ConstantOfShape fill."""
        new = alloc.new(base)
        fill_nodes, tensors = g.constants.rewrite(node.input[i], value, new, alloc)
        new_nodes.extend(fill_nodes)
        new_inits.extend(tensors)
        node.input[i] = new

    for node, k in zip(nodes, kinds):
        eo = e(k.outs[0]) if k.outs else 0
        natural = {t: e(t) for t in k.carry}
        want: dict[str, int] = {t: 0 for t in k.zero}
        if k.kind == "pass":
            want.update({t: eo for t in k.carry})
            for i in k.consts:
                const_input(node, i, eo)
            _scale_attrs(node, eo)
        elif k.kind == "join":
            want.update({t: eo for t in k.carry})
            for i in k.consts:
                const_input(node, i, eo)
        elif k.kind == "rescale":
            ex = natural[k.carry[0]]
            for name, factor in param_factors(node, k, ex, eo):
                idx = list(node.input).index(name)
                if node.name in drop_biases and idx == 2:
                    replace(node, idx, np.zeros_like(g.value(name), dtype=np.float32), f"{name}__dropped")
                else:
                    multiplied(node, idx, factor)
            if node.op_type == "BatchNormalization" and ex:
                _set_eps(node, 4.0**-ex)
        elif k.kind == "derived":
            value = sum((d * natural[t] for d, t in zip(k.degree, k.carry)), Fraction(0))
            if value != eo:
                if eo != 0:
                    raise ModelError(f"{node.op_type} {node.name!r}: exponent {eo} of its output is neither its inputs' product exponent {value} nor 0")
                want.update({t: 0 for t in k.carry})
            for i in k.consts:
                const_input(node, i, eo)
        elif k.kind == "absorb":
            if node.op_type in EPSILON_OPS and k.carry and natural[k.carry[0]]:
                _set_eps(node, 4.0 ** -natural[k.carry[0]])
            if eo:
                raise ModelError(f"{node.op_type} {node.name!r} absorbs scale; its output cannot carry exponent {eo}")
        elif k.kind in ("other", "source"):
            if eo:
                raise ModelError(f"{node.op_type} {node.name!r} is not homogeneous; its output cannot carry exponent {eo}")
        if k.kind != "pass":
            for o in k.outs[1:]:
                if e(o) != eo:
                    raise ModelError(f"outputs of {node.name!r} carry different exponents")
        outer_map: dict[str, str] = {}
        for idx, name in enumerate(node.input):
            if name in want:
                node.input[idx] = version(name, want[name])
            elif name in renamed:
                node.input[idx] = renamed[name]
        for name in outer_refs(node):
            if g.is_act(name) and e(name):
                outer_map[name] = version(name, 0)
        for sub in subgraphs(node) if outer_map else []:
            rename_outer_refs(sub, outer_map)
        for idx, o in enumerate(node.output):
            if o in renamed:
                node.output[idx] = renamed[o]
        new_nodes.append(node)
        for o in node.output:
            for y, scaled in renamed.items():
                if o == scaled:
                    version(y, 0)  # restore the graph output right after its producer
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    drop_unread_constants(graph, outputs)
    # value_info of scaled tensors keeps type and shape (scaling changes neither); renamed
    # outputs get a copy under their new name.
    infos = {vi.name: vi for vi in list(graph.value_info) + list(graph.output)}
    for y, scaled in renamed.items():
        if y in infos:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(infos[y])
            vi.name = scaled
            graph.value_info.append(vi)
    _ensures(model, result)
    return result, dict(edits.derived)


def _set_eps(node: onnx.NodeProto, factor: float) -> None:
    default = 1e-5
    for a in node.attribute:
        if a.name == "epsilon":
            a.f = float(np.float32(a.f * factor))
            return
    node.attribute.append(helper.make_attribute("epsilon", float(np.float32(default * factor))))


def _scale_attrs(node: onnx.NodeProto, exponent: int) -> None:
    if not exponent:
        return
    for a in node.attribute:
        if a.name in SCALED_ATTRS.get(node.op_type, ()) and a.type == onnx.AttributeProto.FLOAT and math.isfinite(a.f):
            a.f = float(np.float32(a.f / 2.0**exponent))
