"""Statistics inside the graph: append per-tensor reductions so one inference returns scalars only.

For every float tensor of the main graph the instrumented model returns three scalars:

* ``min`` = ReduceMin(t) and ``max`` = ReduceMax(t) over all elements (max |x| = max(-min, max));
* a *non-finite flag* = ReduceSum(t): NaN/inf in ``t`` makes it non-finite (IEEE addition always
  propagates NaN, whereas ORT's ReduceMin/Max may skip a NaN). A sum can also overflow to inf on
  huge finite values, so a flag is only a suspicion: callers confirm it with the exact count of
  :func:`instrument` ``(exact_counts=True)`` (IsNaN/IsInf, full-size temporaries), run only on
  the rare slice that raised the flag.

Reductions read their tensor once and allocate nothing of its size, so memory does not depend on
activation size (docs/FACTS.md #10: ``ReduceMax(Abs(t))`` allocates a full-size ``Abs`` temporary).
A ``Relu`` whose input is instrumented gets its statistics from its input's scalars
(min = max(min_in, 0), max = max(max_in, 0); finite in, finite out), which saves three passes
over every post-activation tensor.

With ``underflow=True`` (the default) six more scalars per tensor say how much of it falls below
FP16's normal range (smallest normal ``T`` = 2**-14 ≈ 6.10e-5; docs/NUMERICS.md), all over a
strided **sample** of the tensor: between :data:`SAMPLE` and 2 x :data:`SAMPLE` elements, every
element of smaller tensors (``Slice`` of the flattened tensor with the odd step
``2 * (size // (2 * SAMPLE)) + 1``: spread over the whole tensor, and never aliasing with a
power-of-two period such as a channel count; a period sharing a factor with the step can still
bias it). With ``s`` the sample and ``a = |s|``:

* ``nonzero`` = ReduceSum(Sign(a)); ``examined`` = Size(s);
* ``below`` = ReduceSum(step), the elements with |x| < T, zeros included, where
  step = HardSigmoid(a; alpha=-2**38, beta=2**24) is exactly 1 below T and 0 from T up (the
  affine map is exact in float32: a power-of-two scale, and the float just below T maps to
  2**24 - 1);
* ``below_abs_sum`` = ReduceSum(a * step) and ``abs_sum`` = ReduceSum(a);
* ``min_nonzero_abs`` = ReduceMin(Where(a > 0, a, +inf)).

Why a sample (measured on VGG-19, 2 CPUs under load, 2026-12-01): six elementwise ops over every
element made inference 2.5-3x a plain pass; one Shrink over every element (for an exact magnitude
below T) plus this sample still took 1.8x a plain pass end to end (24.6 s vs 13.5 s). Each
elementwise op writes a temporary of the tensor's size. The sample costs a strided read of at most
131071 elements per tensor. Strided Slice needs opset 10; an opset-9 model gets the same elements
through a Gather at positions ``k * step`` (the positions past the end are masked out), unless it
has an op that can make an empty tensor (NonZero, Compress, control flow), which a Gather cannot
sample. Older opsets get no underflow figures.

Reductions are written without ``axes`` (all axes) and with ``keepdims=0``, which means the same
from opset 1 to the newest, so no opset-specific form (attribute before 18, input from 18) is
needed.

:func:`instrument_packed` gives the same figures through two outputs (every figure a ``[1]``
reduction, joined by one Concat; every tensor's sample step from one vector of sizes): the
statistics pass uses it from opset 10 on, since onnxruntime's cost per node and per fetched output
dominates on small models.

:func:`constant_tensors` finds the tensors that do not depend on any graph input (weights made by
ConstantOfShape, transposed or dequantised weights, shape arithmetic): the statistics pass
measures them once per session instead of on every slice (:mod:`fp16guard.stats.collect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.info import tensor_types as graph_tensor_types
from fp16guard.io.model import FLOAT_TYPES

__all__ = [
    "PREFIX",
    "FP16_MIN_NORMAL",
    "TensorInfo",
    "output_names",
    "underflow_names",
    "underflow_supported",
    "SAMPLE",
    "tensor_types",
    "float_tensors",
    "constant_tensors",
    "constant_model",
    "constant_groups",
    "instrument",
    "PACKED_FIGURES",
    "PACKED_SIZES",
    "PACKED_ORDER",
    "packed_supported",
    "instrument_packed",
]

#: Prefix of every name the instrumentation adds (outputs, nodes, initializers).
PREFIX = "fp16guard_stats"
#: FP16's smallest positive normal value, 2**-14: below it FP16 keeps fewer than 11 bits.
FP16_MIN_NORMAL = 2.0**-14
#: Sample size scale (elements per tensor and inference call) for the underflow figures.
SAMPLE = 1 << 16
#: HardSigmoid(|x|; alpha, beta) = clip(beta + alpha*|x|, 0, 1) is exactly 1 for |x| < 2**-14 and
#: 0 from 2**-14 up: |x| * 2**38 is exact, and the float just below 2**-14 maps to 2**24 - 1.
_STEP_ALPHA = -(2.0**38)
_STEP_BETA = 2.0**24
#: Output of :func:`instrument_packed`: every tensor's figures in one float32 vector, figure by
#: figure (:data:`PACKED_ORDER`), tensor by tensor within a figure.
PACKED_FIGURES = f"{PREFIX}/figures"
#: Output of :func:`instrument_packed`: every tensor's element count (int64 vector); the sample's
#: step and size follow from it (``2 * (size // (2 * SAMPLE)) + 1``, ``ceil(size / step)``).
PACKED_SIZES = f"{PREFIX}/sizes"
#: The figures of :data:`PACKED_FIGURES`, in order (the last five over the strided sample).
PACKED_ORDER = ("min", "max", "flag", "nonzero", "below", "below_abs_sum", "abs_sum", "min_nonzero_abs")
#: Ops whose result differs between runs on the same input: never treated as constant.
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})


@dataclass(frozen=True)
class TensorInfo:
    """One float tensor to measure.

    Attributes:
        name: tensor name in the graph.
        producer: name of the node that produces it; "" for a graph input.
        op_type: the producer's op type; "" for a graph input.
        output_index: which output of the producer it is; -1 for a graph input.
        order: position in graph order (graph inputs first, then node outputs in node order).
        elem_type: ONNX element type (``TensorProto.FLOAT`` for almost every tensor).
    """

    name: str
    producer: str
    op_type: str
    output_index: int
    order: int
    elem_type: int = TensorProto.FLOAT


def output_names(info_index: int) -> tuple[str, str, str]:
    """Names of the (min, max, flag-or-count) outputs of the ``info_index``-th tensor."""
    base = f"{PREFIX}/{info_index}"
    return f"{base}/min", f"{base}/max", f"{base}/nonfinite"


def underflow_names(info_index: int) -> tuple[str, str, str, str, str, str]:
    """Names of the (nonzero, below, below_abs_sum, abs_sum, min_nonzero_abs, examined) outputs
    of the ``info_index``-th tensor (see the module docstring); ``examined`` is int64, the rest
    float32."""
    base = f"{PREFIX}/{info_index}"
    return f"{base}/nonzero", f"{base}/below", f"{base}/below_abs_sum", f"{base}/abs_sum", f"{base}/min_nonzero_abs", f"{base}/examined"


#: Ops whose float outputs may be empty at run time in an opset-9 graph; the Gather sample
#: (opset 9) cannot read an empty tensor, so such models get no underflow figures.
_MAY_BE_EMPTY = frozenset({"NonZero", "Compress", "Loop", "Scan", "If"})


def _sample_mode(model: onnx.ModelProto) -> str | None:
    """How :func:`instrument` samples for the underflow figures: ``slice`` (opset >= 10),
    ``gather`` (opset 9, no op that can make an empty tensor), or None."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version >= 10:
        return "slice"
    if version == 9 and not any(n.op_type in _MAY_BE_EMPTY for n in model.graph.node):
        return "gather"
    return None


def _static_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Element count of every main-graph tensor whose shape ONNX inference fixes (every dim a
    positive number), e.g. all of a batch-1 CNN's activations. Inferred from the graph alone:
    the model's own ``value_info`` is set aside, since a stale one would make the constant sample
    positions run past the tensor."""
    saved = list(model.graph.value_info)
    del model.graph.value_info[:]
    try:
        inferred = graph_tensor_types(model).value_info
    finally:
        model.graph.value_info.extend(saved)
    sizes: dict[str, int] = {}
    for name, vi in inferred.items():
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape") else None
        if dims is not None and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            sizes[name] = int(np.prod([d.dim_value for d in dims], dtype=np.int64)) if dims else 1
    return sizes


def _positions(graph: onnx.GraphProto, size: int, made: dict[int, str]) -> str:
    """Name of an INT64 initializer holding the strided sample positions of a tensor of ``size``
    elements (``range(0, size, 2 * (size // (2 * SAMPLE)) + 1)``), added once per size."""
    if size not in made:
        made[size] = f"{PREFIX}/positions_{size}"
        step = 2 * (size // (2 * SAMPLE)) + 1
        graph.initializer.append(numpy_helper.from_array(np.arange(0, size, step, dtype=np.int64), made[size]))
    return made[size]


def underflow_supported(model: onnx.ModelProto) -> bool:
    """Whether :func:`instrument` can add underflow figures: default-domain opset >= 10 (Slice
    with steps), or opset 9 without ops that can make empty tensors (Gather sample)."""
    return _sample_mode(model) is not None


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor of the main graph (inputs, initializers, node outputs).

    :func:`fp16guard.graph.info.tensor_types` (ONNX type inference on a weightless copy), plus the
    outputs of Constant nodes typed by their value where inference left them untyped. Tensors
    whose type cannot be inferred (unknown custom ops) are missing from the result.
    """
    types = dict(graph_tensor_types(model).elem)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    types.setdefault(node.output[0], attr.t.data_type)
                elif attr.name in ("value_float", "value_floats"):
                    types.setdefault(node.output[0], TensorProto.FLOAT)
    return types


def float_tensors(model: onnx.ModelProto) -> list[TensorInfo]:
    """Every float tensor of the main graph, in graph order.

    Float graph inputs (initializers excluded) come first, then every float output index of every
    node of the main graph (Constant nodes included; multi-output nodes give one entry per float
    output). Integer and boolean tensors, and tensors of unknown type, are skipped.
    """
    types = tensor_types(model)
    init_names = {t.name for t in model.graph.initializer}
    found: list[TensorInfo] = []
    seen: set[str] = set()

    def add(name: str, producer: str, op_type: str, index: int) -> None:
        elem = types.get(name)
        if name and name not in seen and elem in FLOAT_TYPES:
            seen.add(name)
            found.append(TensorInfo(name, producer, op_type, index, len(found), elem))

    for value in model.graph.input:
        if value.name not in init_names:
            add(value.name, "", "", -1)
    for node in model.graph.node:
        for index, name in enumerate(node.output):
            add(name, node.name, node.op_type, index)
    return found


def constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Outputs of main-graph nodes whose value does not depend on any graph input.

    A node is constant when it is in the default ONNX domain, has no subgraph, is not a random
    op, and every input is empty, an initializer that is not a graph input, or a constant
    node's output. Constant/ConstantOfShape outputs, weight transposes, DequantizeLinear of
    stored weights and shape arithmetic on them qualify; anything reading a graph input does not.
    """
    graph = model.graph
    inputs = {v.name for v in graph.input}
    known = {t.name for t in graph.initializer if t.name not in inputs}
    found: set[str] = set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM_OPS:
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if all(not name or name in known for name in node.input):
            outs = {o for o in node.output if o}
            known |= outs
            found |= outs
    return found


def constant_groups(model: onnx.ModelProto, names: Sequence[str]) -> list[list[str]]:
    """Split constant tensors ``names`` into groups that share no computation: the connected
    components of the constant nodes producing them and their constant ancestors. Each group
    can be measured by its own :func:`constant_model`, so only one group's values (for a
    ConstantOfShape VGG-19: one weight matrix) are in memory at a time. Groups follow graph order.
    """
    const = constant_tensors(model)
    producers = {o: n for n in model.graph.node for o in n.output if o}
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for node in model.graph.node:
        outs = [o for o in node.output if o in const]
        if not outs:
            continue
        for other in outs[1:] + [i for i in node.input if i in const and i in producers]:
            parent[find(other)] = find(outs[0])
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(find(name), []).append(name)
    return list(groups.values())


def constant_model(model: onnx.ModelProto, tensors: Sequence[TensorInfo], exact_counts: bool = False) -> onnx.ModelProto:
    """The statistics model of constant ``tensors`` alone: :func:`instrument` of them, without
    graph inputs and without the nodes their values do not need, so it runs with no feeds.

    Run it with graph optimisations off, and do not leave the statistics of constants in the
    per-shard model for onnxruntime to fold: its constant folding evaluates every statistic node
    at session creation and is slow on whole weight matrices (measured on the ConstantOfShape
    VGG-19, 2 CPUs under load: 17-22 s and 1.5 GiB to create the session with the full statistics
    of the constants in it, 21 s and 1.0 GiB with only their min/max/sum, against 3-6 s and
    0.96 GiB for a plain session).

    Raises:
        ValueError: a tensor depends on a graph input (see :func:`constant_tensors`).
    """
    const = constant_tensors(model)
    loose = [t.name for t in tensors if t.name not in const]
    if loose:
        raise ValueError(f"tensors {loose[:3]} depend on graph inputs; expected constant tensors only")
    out = instrument(model, tensors, exact_counts=exact_counts)
    graph = out.graph
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(n for n in node.input if n)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = {t.name for t in graph.initializer}
    kept_inputs = [v for v in graph.input if v.name in inits]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    return out



def _sampling_initializers() -> list[onnx.TensorProto]:
    """The constants the strided underflow sample reads (one set for :func:`instrument` and
    :func:`instrument_packed`): +inf, the flat shape, the sample bound 2 * SAMPLE, 2, 1, and the
    Slice starts/ends/axes."""
    return [
        helper.make_tensor(f"{PREFIX}/inf", TensorProto.FLOAT, [], [float("inf")]),
        helper.make_tensor(f"{PREFIX}/flat_shape", TensorProto.INT64, [1], [-1]),
        helper.make_tensor(f"{PREFIX}/sample", TensorProto.INT64, [], [2 * SAMPLE]),
        helper.make_tensor(f"{PREFIX}/two", TensorProto.INT64, [], [2]),
        helper.make_tensor(f"{PREFIX}/one", TensorProto.INT64, [], [1]),
        helper.make_tensor(f"{PREFIX}/starts", TensorProto.INT64, [1], [0]),
        helper.make_tensor(f"{PREFIX}/ends", TensorProto.INT64, [1], [2**62]),
        helper.make_tensor(f"{PREFIX}/axes0", TensorProto.INT64, [1], [0]),
    ]

def instrument(
    model: onnx.ModelProto,
    tensors: Sequence[TensorInfo],
    exact_counts: bool = False,
    underflow: bool = True,
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose only outputs are per-tensor statistics (scalars).

    For tensor ``k`` of ``tensors`` the outputs are named by :func:`output_names` ``(k)``:
    ``min`` and ``max`` (float32 scalars) and ``nonfinite``: with ``exact_counts=False`` a float32
    flag, non-finite iff the tensor may hold NaN/inf; with ``exact_counts=True`` the exact int64
    number of NaN/inf elements (allocates full-size boolean temporaries; use for diagnosis only).
    With ``underflow=True`` (ignored when ``exact_counts``, and when the opset is below 10) the six
    scalars named by :func:`underflow_names` ``(k)`` come too.

    The original graph outputs are dropped: a caller wants the statistics, and keeping outputs
    would keep their buffers. The input model is not modified; its weights are shared by
    reference only if it holds external-data references (see ``stats_weights``).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if out.ir_version < 4:
        # Initializers may stop being graph inputs (normalize_model), which needs IR >= 4.
        out.ir_version = 4
    del graph.output[:]
    taken = {n for node in graph.node for n in node.output} | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    zero = f"{PREFIX}/zero"
    if zero in taken:
        raise ValueError(f"model already has a tensor named {zero}")
    graph.initializer.append(helper.make_tensor(zero, TensorProto.FLOAT, [], [0.0]))
    inf, flat, sample, one = (f"{PREFIX}/{n}" for n in ("inf", "flat_shape", "sample", "one"))
    ends, starts, axes0 = (f"{PREFIX}/{n}" for n in ("ends", "starts", "axes0"))
    mode = _sample_mode(model) if underflow and not exact_counts else None
    underflow = mode is not None
    static: dict[str, int] = {}
    if mode == "gather":
        static = _static_sizes(out)  # the copy: its value_info is set aside for a moment
        # The sample positions k * step for k < 2 * SAMPLE, as floats (exact up to 2**24 elements;
        # beyond, a position may move by a few elements, which a sample tolerates).
        graph.initializer.extend(
            [
                helper.make_tensor(f"{PREFIX}/positions", TensorProto.FLOAT, [2 * SAMPLE], np.arange(2 * SAMPLE, dtype=np.float32)),
                helper.make_tensor(f"{PREFIX}/one_f", TensorProto.FLOAT, [], [1.0]),
            ]
        )
    if underflow:
        graph.initializer.extend(_sampling_initializers())

    producers = {name: node for node in graph.node for name in node.output}
    by_name = {t.name: k for k, t in enumerate(tensors)}
    positions: dict[int, str] = {}  # static size -> its sample positions initializer
    new_nodes: list[onnx.NodeProto] = []
    outputs: list[onnx.ValueInfoProto] = []

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        new_nodes.append(helper.make_node(op, inputs, [output], name=f"{output}:{op}", **attrs))
        return output

    for k, info in enumerate(tensors):
        if info.name in taken - set(producers) - {i.name for i in graph.input}:
            raise ValueError(f"{info.name} is an initializer; only graph inputs and node outputs are instrumented")
        mn, mx, nf = output_names(k)
        src = producers.get(info.name)
        relu_input = src.input[0] if src is not None and src.op_type == "Relu" and src.domain in ("", "ai.onnx") else None
        x = info.name
        if info.elem_type != TensorProto.FLOAT:
            x = node("Cast", [x], f"{PREFIX}/{k}/as_float", to=TensorProto.FLOAT)
        if not exact_counts and relu_input in by_name and tensors[by_name[relu_input]].elem_type == TensorProto.FLOAT:
            imn, imx, inf_ = output_names(by_name[relu_input])
            node("Max", [imn, zero], mn)
            node("Max", [imx, zero], mx)
            node("Identity", [inf_], nf)
        else:
            node("ReduceMin", [x], mn, keepdims=0)
            node("ReduceMax", [x], mx, keepdims=0)
            if exact_counts:
                is_nan = node("IsNaN", [x], f"{PREFIX}/{k}/isnan")
                is_inf = node("IsInf", [x], f"{PREFIX}/{k}/isinf")
                bad = node("Or", [is_nan, is_inf], f"{PREFIX}/{k}/bad")
                as_int = node("Cast", [bad], f"{PREFIX}/{k}/bad_int", to=TensorProto.INT64)
                node("ReduceSum", [as_int], nf, keepdims=0)
            else:
                node("ReduceSum", [x], nf, keepdims=0)
        if underflow:
            names = underflow_names(k)
            size = node("Size", [x], f"{PREFIX}/{k}/size")
            half = node("Div", [size, sample], f"{PREFIX}/{k}/size_div")
            step = node("Add", [node("Mul", [half, f"{PREFIX}/two"], f"{PREFIX}/{k}/even"), one], f"{PREFIX}/{k}/step")
            flat_x = node("Reshape", [x, flat], f"{PREFIX}/{k}/flat")
            if mode == "slice" or info.name in static:
                if mode == "slice":
                    step1 = node("Reshape", [step, flat], f"{PREFIX}/{k}/step1")
                    xs = node("Slice", [flat_x, starts, ends, axes0, step1], f"{PREFIX}/{k}/sample")
                else:
                    # A size fixed by the graph: the Slice's positions as a constant (shared by
                    # the tensors of that size), read by one Gather — as cheap as the Slice.
                    xs = node("Gather", [flat_x, _positions(graph, static[info.name], positions)], f"{PREFIX}/{k}/sample", axis=0)
                a = xs if relu_input is not None else node("Abs", [xs], f"{PREFIX}/{k}/sample_abs")  # a Relu output is >= 0
                below = node("HardSigmoid", [a], f"{PREFIX}/{k}/below_step", alpha=_STEP_ALPHA, beta=_STEP_BETA)
                node("Size", [xs], names[5])
            else:
                # Gather the same elements as the Slice would: positions k * step below the size;
                # the 2 * SAMPLE - count positions past the end read the last element and are
                # masked out (weight 0) of every figure.
                size_f = node("Cast", [size], f"{PREFIX}/{k}/size_f", to=TensorProto.FLOAT)
                where = node("Mul", [f"{PREFIX}/positions", node("Cast", [step], f"{PREFIX}/{k}/step_f", to=TensorProto.FLOAT)], f"{PREFIX}/{k}/where")
                weight = node("Cast", [node("Less", [where, size_f], f"{PREFIX}/{k}/inside")], f"{PREFIX}/{k}/weight", to=TensorProto.FLOAT)
                last = node("Sub", [size_f, f"{PREFIX}/one_f"], f"{PREFIX}/{k}/last")
                index = node("Cast", [node("Min", [where, last], f"{PREFIX}/{k}/clamped")], f"{PREFIX}/{k}/index", to=TensorProto.INT64)
                xs = node("Gather", [flat_x, index], f"{PREFIX}/{k}/sample", axis=0)
                a = node("Mul", [xs if relu_input is not None else node("Abs", [xs], f"{PREFIX}/{k}/sample_abs"), weight], f"{PREFIX}/{k}/sample_in")
                below = node("Mul", [node("HardSigmoid", [a], f"{PREFIX}/{k}/below_all", alpha=_STEP_ALPHA, beta=_STEP_BETA), weight], f"{PREFIX}/{k}/below_step")
                node("Cast", [node("ReduceSum", [weight], f"{PREFIX}/{k}/count", keepdims=0)], names[5], to=TensorProto.INT64)
            node("ReduceSum", [node("Sign", [a], f"{PREFIX}/{k}/sign")], names[0], keepdims=0)
            node("ReduceSum", [below], names[1], keepdims=0)
            node("ReduceSum", [node("Mul", [a, below], f"{PREFIX}/{k}/below_abs")], names[2], keepdims=0)
            node("ReduceSum", [a], names[3], keepdims=0)
            is_nonzero = node("Greater", [a, zero], f"{PREFIX}/{k}/is_nonzero")
            node("ReduceMin", [node("Where", [is_nonzero, a, inf], f"{PREFIX}/{k}/nonzero_abs")], names[4], keepdims=0)
            outputs.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in names[:5])
            outputs.append(helper.make_tensor_value_info(names[5], TensorProto.INT64, []))
        outputs.append(helper.make_tensor_value_info(mn, TensorProto.FLOAT, []))
        outputs.append(helper.make_tensor_value_info(mx, TensorProto.FLOAT, []))
        outputs.append(helper.make_tensor_value_info(nf, TensorProto.INT64 if exact_counts else TensorProto.FLOAT, []))
    graph.node.extend(new_nodes)
    graph.output.extend(outputs)
    return out


def packed_supported(model: onnx.ModelProto) -> bool:
    """Whether :func:`instrument_packed` applies: default-domain opset >= 10 (Slice with steps)."""
    return _sample_mode(model) == "slice"


def instrument_packed(model: onnx.ModelProto, tensors: Sequence[TensorInfo]) -> onnx.ModelProto:
    """:func:`instrument` (``underflow=True``) with the same figures in two outputs instead of
    nine per tensor: :data:`PACKED_FIGURES` and :data:`PACKED_SIZES`.

    Why (measured on the demo model, 28 tensors, thread CPU time, 2-core VM, 2026-12-06): fetching
    252 scalar outputs cost ~0.15-0.2 ms of a ~0.6 ms inference, and computing each tensor's
    sample step on its own took 5 of its 22 nodes; onnxruntime spends ~0.7 us per node whatever
    its size, so on small models the statistics cost 10-20 plain passes. Here the steps of all
    tensors come from one vector of sizes (a ``Shape`` per tensor, then 3 nodes for all), each
    tensor's step is one ``Gather``, and every figure is a ``[1]`` reduction (``keepdims=1``)
    joined by one ``Concat``.

    The figures are the very numbers :func:`instrument` gives: min, max and the flag reduce the
    flattened tensor (the same elements in the same order; onnxruntime reduces over all axes as
    over one: checked bit for bit, NaN/inf/-0.0 included, in tests/test_stats_speed_equivalence.py),
    and the sample, the elementwise ops and the sums over it are unchanged.

    Raises:
        ValueError: the model's opset is below 10 (use :func:`instrument`), a tensor is an
            initializer, or the model already uses the instrumentation's names.
    """
    if not packed_supported(model):
        raise ValueError("instrument_packed needs default-domain opset >= 10 (Slice with steps); use instrument()")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    if out.ir_version < 4:
        out.ir_version = 4
    del graph.output[:]
    taken = {n for node in graph.node for n in node.output} | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    zero, inf, flat, sample2, two, one = (f"{PREFIX}/{n}" for n in ("zero", "inf", "flat_shape", "sample", "two", "one"))
    starts, ends, axes0 = (f"{PREFIX}/{n}" for n in ("starts", "ends", "axes0"))
    if zero in taken or PACKED_FIGURES in taken:
        raise ValueError(f"model already has a tensor named {zero}")
    graph.initializer.append(helper.make_tensor(zero, TensorProto.FLOAT, [], [0.0]))
    graph.initializer.extend(_sampling_initializers())
    producers = {name: node for node in graph.node for name in node.output}
    by_name = {t.name: k for k, t in enumerate(tensors)}
    inputs = {i.name for i in graph.input}
    new_nodes: list[onnx.NodeProto] = []

    def node(op: str, node_inputs: list[str], output: str, **attrs) -> str:
        new_nodes.append(helper.make_node(op, node_inputs, [output], name=f"{output}:{op}", **attrs))
        return output

    flats: list[str] = []
    sizes: list[str] = []
    for k, info in enumerate(tensors):
        if info.name in taken - set(producers) - inputs:
            raise ValueError(f"{info.name} is an initializer; only graph inputs and node outputs are instrumented")
        x = info.name
        if info.elem_type != TensorProto.FLOAT:
            x = node("Cast", [x], f"{PREFIX}/{k}/as_float", to=TensorProto.FLOAT)
        flats.append(node("Reshape", [x, flat], f"{PREFIX}/{k}/flat"))
        sizes.append(node("Shape", [flats[k]], f"{PREFIX}/{k}/size"))  # [size]: 1-D, ready to join
    # Every tensor's step at once: 2 * (size // (2 * SAMPLE)) + 1, as in instrument().
    all_sizes = node("Concat", sizes, PACKED_SIZES, axis=0) if sizes else None
    if all_sizes is not None:
        halves = node("Div", [all_sizes, sample2], f"{PREFIX}/sizes_div")
        steps = node("Add", [node("Mul", [halves, two], f"{PREFIX}/sizes_even"), one], f"{PREFIX}/steps")
    figures: dict[str, list[str]] = {key: [] for key in PACKED_ORDER}
    for k, info in enumerate(tensors):
        src = producers.get(info.name)
        relu_input = src.input[0] if src is not None and src.op_type == "Relu" and src.domain in ("", "ai.onnx") else None
        flat_x = flats[k]
        base = f"{PREFIX}/{k}"
        if relu_input in by_name and tensors[by_name[relu_input]].elem_type == TensorProto.FLOAT:
            j = by_name[relu_input]
            figures["min"].append(node("Max", [f"{PREFIX}/{j}/min", zero], f"{base}/min"))
            figures["max"].append(node("Max", [f"{PREFIX}/{j}/max", zero], f"{base}/max"))
            figures["flag"].append(f"{PREFIX}/{j}/nonfinite")  # the input's flag: finite in, finite out
        else:
            figures["min"].append(node("ReduceMin", [flat_x], f"{base}/min", keepdims=1))
            figures["max"].append(node("ReduceMax", [flat_x], f"{base}/max", keepdims=1))
            figures["flag"].append(node("ReduceSum", [flat_x], f"{base}/nonfinite", keepdims=1))
        index = f"{base}/index"
        graph.initializer.append(helper.make_tensor(index, TensorProto.INT64, [1], [k]))
        step = node("Gather", [steps, index], f"{base}/step", axis=0)
        xs = node("Slice", [flat_x, starts, ends, axes0, step], f"{base}/sample")
        a = xs if relu_input is not None else node("Abs", [xs], f"{base}/sample_abs")  # a Relu output is >= 0
        below = node("HardSigmoid", [a], f"{base}/below_step", alpha=_STEP_ALPHA, beta=_STEP_BETA)
        figures["nonzero"].append(node("ReduceSum", [node("Sign", [a], f"{base}/sign")], f"{base}/nonzero", keepdims=1))
        figures["below"].append(node("ReduceSum", [below], f"{base}/below", keepdims=1))
        figures["below_abs_sum"].append(node("ReduceSum", [node("Mul", [a, below], f"{base}/below_abs")], f"{base}/below_abs_sum", keepdims=1))
        figures["abs_sum"].append(node("ReduceSum", [a], f"{base}/abs_sum", keepdims=1))
        is_nonzero = node("Greater", [a, zero], f"{base}/is_nonzero")
        nonzero_abs = node("Where", [is_nonzero, a, inf], f"{base}/nonzero_abs")
        figures["min_nonzero_abs"].append(node("ReduceMin", [nonzero_abs], f"{base}/min_nonzero_abs", keepdims=1))
    joined = [name for key in PACKED_ORDER for name in figures[key]]
    outputs = []
    if joined:
        node("Concat", joined, PACKED_FIGURES, axis=0)
        outputs = [
            helper.make_tensor_value_info(PACKED_FIGURES, TensorProto.FLOAT, [len(joined)]),
            helper.make_tensor_value_info(PACKED_SIZES, TensorProto.INT64, [len(tensors)]),
        ]
    graph.node.extend(new_nodes)
    graph.output.extend(outputs)
    return out
