"""How each node relates the scale exponents of its tensors (see :mod:`fp16guard.graph.fold_scales`),
and what the statistics say about a tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx
from onnx import TensorProto, helper

from fp16guard.graph.constants import ConstantTable
from fp16guard.graph.info import outer_refs, subgraphs, tensor_types

__all__ = ["MAX_EXPONENT", "SMALLEST_COLUMNS", "LINEAR_OPS", "EPSILON_OPS", "SCALED_ATTRS", "TensorRange", "NodeKind", "ScaleGraph", "classify", "node_attr"]

#: Largest exponent. Activations of networks without normalisation grow geometrically (the ONNX
#: project's light VGG-19 reaches 3e31), so the exponent is bounded by FP32, not FP16: any finite
#: FP32 tensor (below 2**128) folds under the default threshold (about 2**13), and every converter
#: constant 2**(e1 - e2) is a normal FP32 number (FP32's smallest normal is 2**-126). A converter
#: constant beyond FP16's range (2**16 and up) is read by an FP32 node: the plan's range rule for
#: constants decides it, like any other constant.
MAX_EXPONENT = 120
#: Statistics columns that may hold the smallest non-zero |x| of a tensor (first present wins).
SMALLEST_COLUMNS = ("min_abs_nonzero", "min_nonzero_abs", "smallest_nonzero_abs")

_PASS_OPS = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
        "Reshape", "Transpose", "Flatten", "Identity", "Dropout", "Squeeze", "Unsqueeze", "Expand", "Tile",
        "Slice", "Gather", "GatherElements", "GatherND", "Split", "SpaceToDepth", "DepthToSpace", "Resize",
        "Upsample", "Neg", "Abs", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
        "TopK", "Pad", "Clip", "ReverseSequence", "Compress", "Trilu", "CumSum", "Cast",
    }
)
#: Inputs of pass ops that carry the data's scale and are divided by 2**e (must be constants).
_SCALED_PARAMS = {"Pad": (2,), "Clip": (1, 2)}
#: Attributes of pass ops that carry the data's scale (opset < 11 forms of the same).
SCALED_ATTRS = {"Pad": ("value",), "Clip": ("min", "max")}
_JOIN_OPS = frozenset({"Add", "Sub", "Sum", "Mean", "Max", "Min", "Concat", "Where"})
EPSILON_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization"})
_ABSORB_OPS = EPSILON_OPS | {"LpNormalization", "Sign", "ArgMax", "ArgMin", "Shape", "Size", "NonZero"}
LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


@dataclass(frozen=True)


class TensorRange:
    """What the statistics say about one tensor.

    Attributes:
        max_abs: largest |x| seen (NaN: unknown).
        nonfinite: NaN/inf elements seen.
        smallest: smallest non-zero |x| seen, when the statistics have it (None otherwise).
        mean_abs: mean |x| over the examined elements, when the statistics have it (None otherwise).
    """

    max_abs: float
    nonfinite: int = 0
    smallest: float | None = None
    mean_abs: float | None = None


@dataclass(frozen=True)


class NodeKind:
    """How one node relates the exponents of its tensors (see the module docstring).

    Attributes:
        kind: ``pass``, ``join``, ``rescale``, ``derived``, ``absorb``, ``other`` or ``source``
            (every float input is a constant: its outputs are plain values, exponent 0).
        carry: activation inputs whose exponent the outputs follow (pass: the data; join: the
            operands; derived: the factors; rescale/absorb: the data input).
        zero: activation inputs that must be read at exponent 0 (parameters such as Resize's
            scales, or every input of an ``other`` node).
        consts: input indices of constants divided by ``2**e(out)`` (biases, Pad value, Clip bounds).
        outs: float outputs that carry ``e(out)``.
        degree: for ``derived``: ``e(out) = sum(degree[i] * e(carry[i]))``.
        weight: for ``rescale``: input index of the weight (Conv/Gemm/MatMul) or None (BatchNormalization).
    """

    kind: str
    carry: tuple[str, ...] = ()
    zero: tuple[str, ...] = ()
    consts: tuple[int, ...] = ()
    outs: tuple[str, ...] = ()
    degree: tuple[Fraction, ...] = ()
    weight: int | None = None


def node_attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class ScaleGraph:
    """Facts about the main graph that classification needs (built once)."""

    def __init__(self, model: onnx.ModelProto):
        self.types = tensor_types(model)
        self.constants = ConstantTable(model)
        self.outputs = [v.name for v in model.graph.output]

    def is_const(self, name: str) -> bool:
        return self.constants.is_const(name)

    def is_act(self, name: str) -> bool:
        """A FLOAT tensor computed by the graph (or a graph input): the things that get exponents."""
        return bool(name) and self.types.is_float32(name) and not self.is_const(name)

    def value(self, name: str) -> np.ndarray:
        """Values standing for constant ``name`` in element-wise checks (one element for a fill)."""
        return self.constants.probe(name)


def _scalar(g: ScaleGraph, name: str) -> float | None:
    if not g.is_const(name):
        return None
    value = np.asarray(g.value(name))
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def classify(node: onnx.NodeProto, g: "ScaleGraph") -> NodeKind:
    """The kind of ``node`` and the roles of its tensors (see the module docstring)."""
    op = node.op_type
    acts = [n for n in node.input if g.is_act(n)]
    outs = tuple(o for o in node.output if o and g.types.is_float32(o))
    if node.domain not in ("", "ai.onnx") or subgraphs(node):
        return NodeKind("other", zero=tuple(dict.fromkeys(acts + [n for n in outer_refs(node) if g.is_act(n)])))
    if not acts:
        return NodeKind("source")
    other = NodeKind("other", zero=tuple(dict.fromkeys(acts)))

    if op in LINEAR_OPS:
        return _classify_linear(node, g, outs, other)
    if op == "BatchNormalization":
        params = list(node.input[1:5])
        if len(params) == 4 and all(g.is_const(p) for p in params) and len([o for o in node.output if o]) == 1 and g.is_act(node.input[0]) and not node_attr(node, "training_mode", 0):
            return NodeKind("rescale", carry=(node.input[0],), outs=outs)
        return other
    if op in ("Mul", "Div"):
        a, b = node.input[0], node.input[1]
        if g.is_act(a) and g.is_act(b):
            return NodeKind("derived", carry=(a, b), outs=outs, degree=(Fraction(1), Fraction(1 if op == "Mul" else -1)))
        if g.is_act(a):
            return NodeKind("pass", carry=(a,), outs=outs)
        if op == "Mul" and g.is_act(b):
            return NodeKind("pass", carry=(b,), outs=outs)
        if op == "Div" and g.is_act(b):
            return NodeKind("derived", carry=(b,), outs=outs, degree=(Fraction(-1),))
        return other
    if op == "Reciprocal":
        return NodeKind("derived", carry=(node.input[0],), outs=outs, degree=(Fraction(-1),))
    if op == "Sqrt":
        return NodeKind("derived", carry=(node.input[0],), outs=outs, degree=(Fraction(1, 2),))
    if op == "ReduceSumSquare":
        return NodeKind("derived", carry=(node.input[0],), outs=outs, degree=(Fraction(2),))
    if op == "Pow":
        p = _scalar(g, node.input[1]) if len(node.input) > 1 else None
        if g.is_act(node.input[0]) and p is not None and math.isfinite(p) and p > 0:
            frac = Fraction(p).limit_denominator(4)
            if abs(float(frac) - p) < 1e-9:
                return NodeKind("derived", carry=(node.input[0],), outs=outs, degree=(frac,))
        return other
    if op in _JOIN_OPS:
        operands = list(node.input[1:]) if op == "Where" else list(node.input)
        if op == "Where" and g.is_act(node.input[0]):
            return other
        carry = tuple(n for n in operands if g.is_act(n))
        consts = tuple(i for i, n in enumerate(node.input) if (i > 0 or op != "Where") and g.is_const(n) and g.types.is_float32(n))
        if not carry:
            return NodeKind("source")
        return NodeKind("join", carry=carry, consts=consts, outs=outs)
    if op in _ABSORB_OPS:
        if op == "LayerNormalization" and any(o for o in node.output[1:]):
            return other
        data = node.input[0]
        zero = tuple(n for n in node.input[1:] if g.is_act(n))
        return NodeKind("absorb", carry=(data,) if g.is_act(data) else (), zero=zero, outs=outs)
    if op in _PASS_OPS:
        data = node.input[0]
        if not g.is_act(data):
            return NodeKind("source") if not acts else other
        if op == "Cast" and node_attr(node, "to") not in _FLOAT_TYPES:
            return other
        if op == "Dropout" and len(node.input) > 2 and node.input[2] and not g.is_const(node.input[2]):
            return other  # training_mode computed at run time: not provably inference
        scaled = _SCALED_PARAMS.get(op, ())
        consts, zero = [], []
        for i, name in enumerate(node.input[1:], start=1):
            if not name or not g.types.is_float32(name):
                continue
            if i in scaled:
                if not g.is_const(name):
                    return other
                consts.append(i)
            elif g.is_act(name):
                if op == "PRelu":
                    return other  # a computed slope: not a plain parameter
                zero.append(name)
        if op == "Pad" and (node_attr(node, "mode", b"constant") or b"constant") not in (b"constant", "constant"):
            consts = []  # reflect/edge padding copies values: nothing to rescale
        return NodeKind("pass", carry=(data,), zero=tuple(zero), consts=tuple(consts), outs=outs)
    return other


def _classify_linear(node: onnx.NodeProto, g: ScaleGraph, outs: tuple[str, ...], other: NodeKind) -> NodeKind:
    op = node.op_type
    a, b = node.input[0], node.input[1] if len(node.input) > 1 else ""
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if bias and not g.is_const(bias):
        return other  # a computed bias (Gemm C): must share the output's scale; not handled
    if op in ("Conv", "ConvTranspose"):
        if g.is_act(a) and g.is_const(b):
            return NodeKind("rescale", carry=(a,), consts=(2,) if bias else (), outs=outs, weight=1)
        if g.is_act(a) and g.is_act(b):
            return NodeKind("derived", carry=(a, b), consts=(2,) if bias else (), outs=outs, degree=(Fraction(1), Fraction(1)))
        return other
    if g.is_act(a) and g.is_const(b):
        return NodeKind("rescale", carry=(a,), consts=(2,) if bias else (), outs=outs, weight=1)
    if g.is_const(a) and g.is_act(b):
        return NodeKind("rescale", carry=(b,), consts=(2,) if bias else (), outs=outs, weight=0)
    if g.is_act(a) and g.is_act(b):
        return NodeKind("derived", carry=(a, b), consts=(2,) if bias else (), outs=outs, degree=(Fraction(1), Fraction(1)))
    return other
