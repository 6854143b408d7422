"""Graph pass: fold power-of-two scales into weights so large activations fit in FP16.

Why: many layers overflow FP16 only because of *scale*. Conv, MatMul, Gemm, ReLU, pooling,
Concat, Reshape... are positively homogeneous: divide a layer's weights and bias by ``2**e`` and
its output, and everything downstream, is divided by ``2**e`` until a node that is not
homogeneous, where one Mul by ``2**e`` restores the true values — or a scale-invariant
normalisation absorbs it. Powers of two are exact in FP16 and FP32 (barring range limits), so
the folded model computes the same function as the original.

**Exponents.** Every FLOAT activation ``t`` gets an integer exponent ``e(t)`` in
``[0, MAX_EXPONENT]``: the folded model stores ``t / 2**e(t)`` under the same name. Constants and
initializers are not activations; the ones that must follow a scale are rewritten. How a node
relates its exponents depends on its kind (:func:`classify`):

* ``pass`` — homogeneous in one data input (Relu, LeakyRelu, PRelu, MaxPool, AveragePool,
  GlobalAveragePool, Reshape, Transpose, Flatten, Identity, Dropout (inference), Squeeze,
  Unsqueeze, Slice, Gather, Split, Resize, Pad, Clip, Neg, Abs, ReduceMean/Max/Min/Sum/L1/L2,
  Mul or Div by a constant, Cast between float types...): ``e(out) = e(data)``. Scale-carrying
  parameters are rescaled (Pad's constant value, Clip's bounds).
* ``join`` — operands must share the scale (Add, Sub, Sum, Mean, Max, Min, Concat, Where):
  ``e(out) = e(operands)``; a constant operand (a bias) is divided by ``2**e(out)``.
* ``rescale`` — a linear op with constant weights (Conv, ConvTranspose, Gemm, MatMul with an
  initializer operand, BatchNormalization): its output exponent is free. Weights are multiplied
  by ``2**(e(in) - e(out))``, the bias divided by ``2**e(out)``. This is where scales are chosen.
* ``derived`` — products and powers of activations: Mul/Div of two activations, MatMul/Conv of
  two activations (exponents add), Pow by a constant, Sqrt (halves), Reciprocal, ReduceSumSquare.
* ``absorb`` — scale-invariant: LayerNormalization, InstanceNormalization, GroupNormalization
  (their ``epsilon`` is divided by ``4**e(in)``: exact, it is an FP32 attribute), LpNormalization,
  Sign, ArgMax/ArgMin, Shape, Size, NonZero: ``e(out) = 0``.
* ``other`` — everything else (Softmax, Sigmoid, Exp, Tanh, Erf, Cast to integer, subgraph
  holders, custom ops...): reads every float input at exponent 0. Graph outputs too.

Where a reader needs an exponent ``r`` other than the one its input carries, one converter
``Mul(t, 2**(e(t) - r))`` is inserted (shared by all readers needing the same ``r``): with
``r = 0`` it is the FP32 *restore* where a region ends; between two scaled regions it is an exact
FP16 rescale. A graph output ``y`` with ``e(y) > 0`` is produced as ``y__scaled`` and restored
under its own name, so the model's interface is unchanged.

**Choosing exponents** (:func:`solve_scales`): tensors linked by ``pass`` and ``join`` nodes form
a class (union-find) that shares one exponent, so Concats and most residual Adds need no
converters; the class exponent is the smallest that brings every member's calibrated ``max_abs``
to at most the plan threshold. Two refinements (docs/FOLDING.md): a join whose operands are
partly made by a weight or product (the branch) and partly by pass/join ops (the skip: a
residual stream) joins the branch's class only and reads the skip through a converter when
their exponents differ, so a stream growing block by block can step its scale up (joins and
skips still share one exponent wherever both guards allow it); and a layer whose weights cannot
take its whole step ``2**(e_in - e_out)`` gets its input's class raised (within its guard).
Biases that FP16 cannot hold next to their output (at most :data:`NEGLIGIBLE_BIAS` of the
output's mean |x|) are dropped (set to 0) and recorded. Underflow guard: a class whose scaled values would sink below FP16's normal
range keeps exponent 0 (and so the pinning rule): with a smallest non-zero |x| column in the
statistics (one of :data:`SMALLEST_COLUMNS`) the scaled smallest value must stay ≥ 2**-14;
without one, the scaled ``max_abs`` must stay ≥ :data:`MIN_SCALED_MAX` (1.0), which keeps values
down to ``max_abs * 2**-14`` normal. Rescaled weights, biases and constants must stay as
faithful in FP16 as the originals (relative L2 rounding error at most twice the original's, or
below FP16's unit round-off ``2**-11``), and at most ``2**-11`` of their magnitude may newly fall
below FP16's normal range (a subnormal weight has no room left for onnxruntime's FP16 weight
fusions: see :func:`faithful`); a tiny constant added to a much larger operand (an
``epsilon``, at most ``2**-10`` of the operand's max |x|) may lose precision, but never becomes 0.

Contract of :func:`apply_scales` (the pass proper):

* **Requires** (checked, ModelError): weights loaded; unique node names; every exponent an
  integer in ``[0, MAX_EXPONENT]`` and naming a FLOAT activation of the main graph.
* **Ensures** (checked): the ONNX checker passes; graph inputs and outputs keep their names and
  types; every node's exponents obey its kind's relation above (converters make them); the model
  computes the same outputs as the input model, up to FP32 rounding of the rescaled constants.
* The input model is not modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Collection, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import ModelError
from fp16guard.graph.constants import ConstantTable, drop_unread_constants
from fp16guard.graph.info import NameAllocator, all_names, outer_refs, rename_outer_refs, subgraphs, tensor_types
from fp16guard.io.model import PROTOBUF_LIMIT

if TYPE_CHECKING:  # pyarrow is needed by scaled_stats only: the passes run with numpy and onnx alone
    import pyarrow as pa

__all__ = [
    "MAX_EXPONENT",
    "MIN_SCALED_MAX",
    "NEGLIGIBLE_BIAS",
    "SMALLEST_COLUMNS",
    "TensorRange",
    "NodeKind",
    "ScaleSolution",
    "classify",
    "solve_scales",
    "apply_scales",
    "scaled_stats",
]

#: Largest exponent. Activations of networks without normalisation grow geometrically (the ONNX
#: project's light VGG-19 reaches 3e31), so the exponent is bounded by FP32, not FP16: any finite
#: FP32 tensor (below 2**128) folds under the default threshold (about 2**13), and every converter
#: constant 2**(e1 - e2) is a normal FP32 number (FP32's smallest normal is 2**-126). A converter
#: constant beyond FP16's range (2**16 and up) is read by an FP32 node: the plan's range rule for
#: constants decides it, like any other constant.
MAX_EXPONENT = 120
#: A Conv/Gemm/MatMul bias whose folded value FP16 cannot hold is dropped (set to 0) when it is
#: below this fraction of the mean |x| of the node's output (FP16's unit round-off): an FP16
#: output of typical size cannot hold such a bias anyway.
NEGLIGIBLE_BIAS = 2.0**-11
#: Largest scale-down of one converter Mul: its factor 2**-14 is FP16's smallest normal number.
_MAX_CONVERTER_STEP = 14
#: Without a smallest-|x| statistic, a scaled tensor's max |x| must stay at least this (see the
#: module docstring: keeps values down to max_abs * 2**-14 in FP16's normal range).
MIN_SCALED_MAX = 1.0
#: Statistics columns that may hold the smallest non-zero |x| of a tensor (first present wins).
SMALLEST_COLUMNS = ("min_abs_nonzero", "min_nonzero_abs", "smallest_nonzero_abs")
#: FP16's smallest normal magnitude and unit round-off.
_FP16_MIN_NORMAL = 2.0**-14
_FP16_UNIT = 2.0**-11
_FP16_SMALLEST = 2.0**-24
_FP16_MAX = 65504.0

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
_SCALED_ATTRS = {"Pad": ("value",), "Clip": ("min", "max")}
_JOIN_OPS = frozenset({"Add", "Sub", "Sum", "Mean", "Max", "Min", "Concat", "Where"})
_ABSORB_EPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization"})
_ABSORB_OPS = _ABSORB_EPS | {"LpNormalization", "Sign", "ArgMax", "ArgMin", "Shape", "Size", "NonZero"}
_LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
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


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
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


def _scalar(g: _Graph, name: str) -> float | None:
    if not g.is_const(name):
        return None
    value = np.asarray(g.value(name))
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def classify(node: onnx.NodeProto, g: "_Graph") -> NodeKind:
    """The kind of ``node`` and the roles of its tensors (see the module docstring)."""
    op = node.op_type
    acts = [n for n in node.input if g.is_act(n)]
    outs = tuple(o for o in node.output if o and g.types.is_float32(o))
    if node.domain not in ("", "ai.onnx") or subgraphs(node):
        return NodeKind("other", zero=tuple(dict.fromkeys(acts + [n for n in outer_refs(node) if g.is_act(n)])))
    if not acts:
        return NodeKind("source")
    other = NodeKind("other", zero=tuple(dict.fromkeys(acts)))

    if op in _LINEAR_OPS:
        return _classify_linear(node, g, outs, other)
    if op == "BatchNormalization":
        params = list(node.input[1:5])
        if len(params) == 4 and all(g.is_const(p) for p in params) and len([o for o in node.output if o]) == 1 and g.is_act(node.input[0]) and not _attr(node, "training_mode", 0):
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
        if op == "Cast" and _attr(node, "to") not in _FLOAT_TYPES:
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
        if op == "Pad" and (_attr(node, "mode", b"constant") or b"constant") not in (b"constant", "constant"):
            consts = []  # reflect/edge padding copies values: nothing to rescale
        return NodeKind("pass", carry=(data,), zero=tuple(zero), consts=tuple(consts), outs=outs)
    return other


def _classify_linear(node: onnx.NodeProto, g: _Graph, outs: tuple[str, ...], other: NodeKind) -> NodeKind:
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


# ------------------------------------------------------------------------------------------
# guards on stored values


def _fp16_rel_error(values: np.ndarray) -> float:
    """Relative L2 error of storing ``values`` in FP16 (inf when something overflows)."""
    a = np.asarray(values, dtype=np.float32).ravel()
    if a.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        r = a.astype(np.float16).astype(np.float32)
    if not np.all(np.isfinite(r[np.isfinite(a)])):
        return math.inf
    norm = float(np.linalg.norm(a.astype(np.float64)))
    return float(np.linalg.norm((r - a).astype(np.float64))) / norm if norm else 0.0


def _subnormal_mass(values: np.ndarray) -> float:
    """Share of the L1 magnitude of ``values`` that lies below FP16's normal range (0 < |x| < 2**-14)."""
    a = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    total = float(a.sum())
    return float(a[(a > 0) & (a < _FP16_MIN_NORMAL)].sum()) / total if total else 0.0


def faithful(original: np.ndarray, rescaled: np.ndarray) -> bool:
    """True when ``rescaled`` keeps (about) the FP16 precision ``original`` has: relative L2 rounding
    error at most twice the original's, or below FP16's unit round-off; and no more than FP16's
    unit round-off of its magnitude newly below FP16's normal range (see the module docstring).

    Why the second test: a subnormal FP16 weight keeps few bits, and any further scaling
    flushes it. onnxruntime does scale weights further: it fuses a Mul that follows a Conv into
    the Conv's FP16 weights, in FP16 (docs/FACTS.md #6a: light ResNet-50 folded with weights of
    4.4e-5 ran with logits 0.49 off). Weights kept in the normal range have 14 powers of two of
    room below them."""
    after = _fp16_rel_error(rescaled)
    if after > max(2.0 * _fp16_rel_error(original), _FP16_UNIT):
        return False
    return _subnormal_mass(rescaled) <= max(_subnormal_mass(original), _FP16_UNIT)


def _rescaled_constant(value: np.ndarray, exponent: int, operand_max: float | None) -> np.ndarray | None:
    """``value / 2**exponent``, or None when FP16 would lose it. An epsilon (at most 2**-10 of the
    operand's max |x|) may lose precision but is kept at least at FP16's smallest subnormal."""
    value = np.asarray(value, dtype=np.float32)
    if exponent == 0:
        return value
    scaled = (value.astype(np.float64) / 2.0**exponent).astype(np.float32)
    if faithful(value, scaled):
        return scaled
    biggest = float(np.max(np.abs(value))) if value.size else 0.0
    if operand_max is not None and not math.isnan(operand_max) and biggest * 2.0**10 <= operand_max:
        floor = np.float32(_FP16_SMALLEST)
        keep = np.where((value != 0) & (np.abs(scaled) < floor), np.sign(value) * floor, scaled)
        return keep.astype(np.float32)
    return None


# ------------------------------------------------------------------------------------------
# choosing exponents


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
    """Largest exponent the underflow guard allows for this tensor (0 when unknown)."""
    if r is None or r.nonfinite or not math.isfinite(r.max_abs):
        return 0
    if r.smallest is not None and math.isfinite(r.smallest) and r.smallest > 0:
        return max(0, int(math.floor(math.log2(r.smallest / _FP16_MIN_NORMAL))))
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
    g = _Graph(model)
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
            unknown = next(t for t in names if _need(ranges.get(t), threshold) is None)
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


def _raise_for_weights(nodes, kinds, g: _Graph, uf: _UnionFind, members: dict[str, list[str]], class_exp: dict[str, int], allowed_of: dict[str, int], solution: ScaleSolution) -> None:
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


def _rescale_output(node: onnx.NodeProto, k: NodeKind, g: _Graph, ex: int, wanted: int, out_range: TensorRange | None, notes: list[str]) -> tuple[int, dict | None]:
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


def _params_verdict(node: onnx.NodeProto, k: NodeKind, g: _Graph, ex: int, eo: int, out_range: TensorRange | None) -> dict | None:
    """None when the rescale point's weights or bias would lose precision at (ex, eo); ``{}``
    when all stay faithful; a dropped-bias record when only the bias fails and is negligible."""
    dropped: dict = {}
    try:
        for name, factor in _param_factors(node, k, ex, eo):
            if factor == 1 or not g.is_const(name):
                continue
            value = g.value(name)
            if faithful(value, (value.astype(np.float64) * factor).astype(np.float32)):
                continue
            is_bias = node.op_type in _LINEAR_OPS and 2 in k.consts and name == node.input[2]
            biggest = float(np.max(np.abs(value))) if value.size else 0.0
            mean = out_range.mean_abs if out_range is not None else None
            if not is_bias or mean is None or not math.isfinite(mean) or not biggest <= NEGLIGIBLE_BIAS * mean:
                return None
            dropped = {"node": node.name, "bias": name, "bias_max_abs": biggest, "output_mean_abs": mean, "exponent": eo}
    except ModelError:
        return None
    return dropped


def _param_factors(node: onnx.NodeProto, k: NodeKind, ex: int, eo: int) -> list[tuple[str, float]]:
    """(constant input, factor it is multiplied by) for a rescale node going from ``ex`` to ``eo``."""
    if node.op_type == "BatchNormalization":
        scale, bias, mean, var = node.input[1:5]
        return [(scale, 2.0**-eo), (bias, 2.0**-eo), (mean, 2.0**-ex), (var, 4.0**-ex)]
    out = [(node.input[k.weight], 2.0 ** (ex - eo))]
    if 2 in k.consts:
        out.append((node.input[2], 2.0**-eo))
    return out


def _consts_ok(node: onnx.NodeProto, k: NodeKind, g: _Graph, exponent: int, operand_max: float | None) -> bool:
    """Whether every scale-carrying constant of ``node`` can be divided by ``2**exponent`` (see
    :func:`_rescaled_constant`; ``operand_max`` is the max |x| of the operand it is added to)."""
    for i in k.consts:
        if _rescaled_constant(g.value(node.input[i]), exponent, operand_max) is None:
            return False
    for name in _SCALED_ATTRS.get(node.op_type, ()):
        value = _attr(node, name)
        if isinstance(value, float) and math.isfinite(value) and value != 0 and _rescaled_constant(np.asarray(value, np.float32), exponent, None) is None:
            return False
    return True


# ------------------------------------------------------------------------------------------
# the pass


def _requires(model: onnx.ModelProto, g: _Graph, exponents: Mapping[str, int]) -> None:
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
    g = _Graph(model)
    _requires(model, g, exponents)
    unknown = sorted(set(drop_biases) - {n.name for n in model.graph.node if n.op_type in _LINEAR_OPS and len(n.input) > 2 and g.is_const(n.input[2])})
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
            while r - at > _MAX_CONVERTER_STEP:
                at += _MAX_CONVERTER_STEP
                step = alloc.new(f"{t}__scale_e{at}")
                edits.derived[step] = (t, at)
                source = converter(source, _MAX_CONVERTER_STEP, step)
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
        value = _rescaled_constant(g.value(name), exponent, math.inf)
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
            for name, factor in _param_factors(node, k, ex, eo):
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
            if node.op_type in _ABSORB_EPS and k.carry and natural[k.carry[0]]:
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


def _fill_row(template: dict, name: str, producer: tuple[str, str, int], value: float) -> dict:
    """A statistics row for a ConstantOfShape output of ``value``: ``template``'s columns (shard
    bookkeeping), figures of a tensor whose every element is ``value`` (the ``examined`` count
    of the template, so proportions read right)."""
    row = dict(template)
    magnitude = abs(value)
    row.update(tensor=name, producer=producer[0], op_type=producer[1], output_index=producer[2], min=value, max=value, max_abs=magnitude, nonfinite=0 if math.isfinite(value) else 1)
    examined = row.get("examined")
    if examined is not None:
        small = 0 < magnitude < _FP16_MIN_NORMAL
        row.update(
            nonzero=examined if magnitude else 0,
            subnormal=examined if small else 0,
            min_nonzero_abs=magnitude if magnitude else math.inf,
            abs_sum=magnitude * examined,
            subnormal_abs_sum=magnitude * examined if small else 0.0,
        )
    return row


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
        if a.name in _SCALED_ATTRS.get(node.op_type, ()) and a.type == onnx.AttributeProto.FLOAT and math.isfinite(a.f):
            a.f = float(np.float32(a.f / 2.0**exponent))


# ------------------------------------------------------------------------------------------
# statistics of the folded model


#: Statistics columns that hold magnitudes of a tensor's values: divided by 2**e when it is scaled.
_MAGNITUDE_COLUMNS = frozenset({"min", "max", "max_abs", "abs_sum"} | set(SMALLEST_COLUMNS))
#: Columns that depend on where values fall against FP16's fixed limits: unknown (null) once scaled.
_UNKNOWN_WHEN_SCALED = frozenset({"subnormal", "subnormal_abs_sum"})


def scaled_stats(stats: "pa.Table", folded: onnx.ModelProto, exponents: Mapping[str, int], new_tensors: Mapping[str, tuple[str, int]]) -> "pa.Table":
    """The statistics the folded model would have measured: one row per tensor it holds.

    Rows of tensors that survive are divided by ``2**e``; tensors the pass added (converters,
    ``__scaled`` outputs) get their source's row divided by their exponent; rows of tensors that
    no longer exist (a Conv's output before a folded BatchNormalization) are dropped. The
    table keeps ``stats``'s schema.
    """
    import pyarrow as pa

    rows = {r["tensor"]: r for r in stats.to_pylist()}
    scaled = [c for c in stats.column_names if c in _MAGNITUDE_COLUMNS]
    unknown = [c for c in stats.column_names if c in _UNKNOWN_WHEN_SCALED and stats.schema.field(c).nullable]
    present = {v.name for v in folded.graph.input} | {o for n in folded.graph.node for o in n.output if o}
    out: list[dict] = []

    def scale(row: dict, exponent: int, name: str, producer: dict | None = None) -> dict:
        new = dict(row)
        new["tensor"] = name
        if producer:
            new.update({k: v for k, v in producer.items() if k in new})
        if exponent:
            for c in scaled:
                if new.get(c) is not None:
                    new[c] = float(new[c]) / 2.0**exponent
            for c in unknown:
                new[c] = None
        return new

    producers = {o: (n.name, n.op_type, i) for n in folded.graph.node for i, o in enumerate(n.output) if o}
    restored = {v.name for v in folded.graph.output}  # graph outputs always hold true values
    # Fills the pass wrote (folded weights, dropped biases): their figures follow from their value.
    fills = ConstantTable(folded).fills
    template = next(iter(rows.values()), None)
    for name, fill in fills.items():
        if name not in rows and template is not None and name in producers:
            out.append(_fill_row(template, name, producers[name], fill.value))
    for name, row in rows.items():
        if name in present:
            prod = producers.get(name) if name in restored and exponents.get(name) else None
            extra = {"producer": prod[0], "op_type": prod[1], "output_index": prod[2]} if prod else None  # now the restore Mul
            out.append(scale(row, 0 if name in restored else int(exponents.get(name, 0)), name, extra))
    for name, (source, exponent) in new_tensors.items():
        if source in rows and name in present:
            prod = producers.get(name)
            extra = {"producer": prod[0], "op_type": prod[1], "output_index": prod[2]} if prod else None
            out.append(scale(rows[source], exponent, name, extra))
    return pa.Table.from_pylist(out, schema=stats.schema)
