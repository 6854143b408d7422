"""A per-node cost model from inferred shapes, and the share of it that runs in FP16.

FP16 exists for speed, so a plan is judged by how much of the model's arithmetic it leaves in
FP16, not by how many nodes it pins. This module estimates, for every node of the main graph:

* ``flops``: floating-point operations of one inference at the given input shapes. Heavy
  arithmetic (:data:`COMPUTE_OPS`: Conv, ConvTranspose, Gemm, MatMul, Einsum, LSTM/GRU/RNN,
  attention, and the integer / quantised forms of Conv and MatMul at their float-equivalent
  count) is counted as 2 × multiply-accumulates. Elementwise, reduction and normalisation ops
  cost about one flop per element (:data:`PER_ELEMENT_FLOPS` gives the few ops that cost more,
  e.g. Softmax and LayerNormalization); pure data movement (Reshape, Transpose, Gather, ...)
  costs none. Every node costs at least :data:`NOMINAL_FLOPS`, so a plan with more FP32 nodes
  never costs less than a subset of it.
* ``bytes``: elements of the node's float inputs and outputs × 4 (FP32 storage), in bytes.

Shapes come from ONNX shape inference on a graph-only copy of the model (initializer payloads
are never copied or read: large or external initializers become typed graph inputs), with the
symbolic or unknown dimensions of the graph inputs replaced by concrete ones (``input_shapes``,
e.g. one calibration sample's shapes; else 1). Unknown intermediate dimensions count as 1; a node
with no known shape at all costs :data:`NOMINAL_FLOPS`. Nothing here raises on a model that
shape inference cannot fully handle.

Subgraphs: an ``If``, ``Loop`` or ``Scan`` node is charged the cost of its body (the larger
branch for ``If``; a ``Loop``'s body once per iteration when the trip count is a constant,
otherwise once), and is a compute node when its body holds one. The body's nodes get no entries
of their own: the plan pins subgraph nodes through their parent.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

__all__ = [
    "COMPUTE_OPS",
    "INTEGER_OPS",
    "NOMINAL_FLOPS",
    "FP16Share",
    "NodeCost",
    "fmt_share",
    "fp16_share",
    "fp32_cost",
    "node_costs",
    "share_for_run",
]

#: Ops counted as heavy arithmetic (FLOPs = 2 × multiply-accumulates).
COMPUTE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN",
    "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul",
    # onnxruntime contrib ops (com.microsoft)
    "FusedConv", "FusedGemm", "FusedMatMul", "DynamicQuantizeMatMul", "MatMulNBits", "QGemm",
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "DecoderMaskedMultiHeadAttention",
    "NhwcConv", "QLinearConvTranspose",
})

#: Compute ops whose arithmetic is integer (quantised): they never run in FP16, so
#: :func:`fp16_share` leaves them out of the float totals.
INTEGER_OPS = frozenset({
    "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul",
    "MatMulNBits", "QGemm", "QLinearConvTranspose",
})

#: Least cost of any node, in FLOPs (also the cost of a node whose shapes are unknown).
NOMINAL_FLOPS = 1.0

#: Ops that only move, reshape or index data: no arithmetic (0 flops per element).
MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Concat", "Split", "Slice",
    "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Tile", "Pad", "Shape", "Size",
    "Constant", "ConstantOfShape", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth", "Resize",
    "ScatterND", "ScatterElements", "Scatter", "Compress", "NonZero", "Range", "Dropout",
    "OneHot", "Trilu", "ReverseSequence", "Upsample", "SequenceConstruct", "SequenceAt",
})

#: Flops per output element of ops that cost more than one (approximate).
PER_ELEMENT_FLOPS = {
    "Softmax": 5.0, "LogSoftmax": 5.0, "LayerNormalization": 8.0, "SkipLayerNormalization": 9.0,
    "SimplifiedLayerNormalization": 5.0, "SkipSimplifiedLayerNormalization": 6.0,
    "RMSNormalization": 5.0, "InstanceNormalization": 8.0, "GroupNormalization": 8.0,
    "BatchNormalization": 2.0, "LpNormalization": 3.0, "MeanVarianceNormalization": 8.0,
    "Gelu": 8.0, "FastGelu": 8.0, "BiasGelu": 9.0, "Erf": 4.0, "Tanh": 4.0, "Sigmoid": 4.0,
    "HardSigmoid": 3.0, "Swish": 5.0, "Mish": 8.0, "Softplus": 4.0, "Elu": 3.0, "Selu": 3.0,
    "Exp": 4.0, "Log": 4.0, "Pow": 4.0, "Sqrt": 2.0, "Reciprocal": 2.0,
}

#: Ops whose cost scales with their (larger) input rather than their output.
_REDUCTIONS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "TopK", "CumSum",
})
_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_RNNS = frozenset({"LSTM", "GRU", "RNN"})
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})

_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})
_BYTES_PER_ELEMENT = 4  # costs are stated for FP32 storage
#: Initializers at most this many bytes stay constants in the inference copy (shape tensors).
_KEEP_INIT_BYTES = 4096

Shape = tuple  # of int (or None where unknown)


@dataclass(frozen=True)
class NodeCost:
    """Estimated cost of one node for one inference.

    Attributes:
        name: node name (as in the plan).
        op_type: the node's op.
        flops: floating-point operations (2 × MACs for compute ops), at least
            :data:`NOMINAL_FLOPS`.
        bytes: float input + output elements × 4, in bytes (0 when no float shape is known).
        compute: the node is heavy arithmetic (:data:`COMPUTE_OPS`, or a subgraph op holding one).
    """

    name: str
    op_type: str
    flops: float
    bytes: float
    compute: bool


@dataclass(frozen=True)
class FP16Share:
    """How much of a model's estimated float arithmetic a plan leaves in FP16.

    Integer (quantised) compute ops (:data:`INTEGER_OPS`) are in neither the FLOP totals nor the
    compute-node counts: they do not run in FP16 whatever the plan says.

    Attributes:
        flops_total: estimated float FLOPs of one inference (all nodes but integer ones).
        flops_fp16: of these, the FLOPs of nodes not kept in FP32.
        share_flops: ``flops_fp16 / flops_total`` in 0..1; None when ``flops_total`` is 0.
        compute_nodes_total: float compute nodes (Conv, Gemm, MatMul, ...).
        compute_nodes_fp16: of these, the ones not kept in FP32.
        nodes_total: nodes of the main graph.
        nodes_fp32: nodes of the main graph kept in FP32.
    """

    flops_total: float
    flops_fp16: float
    share_flops: float | None
    compute_nodes_total: int
    compute_nodes_fp16: int
    nodes_total: int
    nodes_fp32: int

    def to_dict(self) -> dict:
        """The record as a JSON-ready dict (the manifest's ``fp16_share``), plus ``summary``
        (:meth:`describe`)."""
        return {**asdict(self), "summary": self.describe()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "FP16Share":
        """Read a record written by :meth:`to_dict` (``summary`` and unknown keys ignored)."""
        share = data.get("share_flops")
        return cls(
            flops_total=float(data.get("flops_total") or 0.0),
            flops_fp16=float(data.get("flops_fp16") or 0.0),
            share_flops=None if share is None else float(share),
            compute_nodes_total=int(data.get("compute_nodes_total") or 0),
            compute_nodes_fp16=int(data.get("compute_nodes_fp16") or 0),
            nodes_total=int(data.get("nodes_total") or 0),
            nodes_fp32=int(data.get("nodes_fp32") or 0),
        )

    def describe(self) -> str:
        """One line, e.g. ``FP16 runs 97% of the estimated FLOPs (52 of 54 Conv/Gemm/MatMul
        nodes)``."""
        nodes = f"{self.compute_nodes_fp16} of {self.compute_nodes_total} Conv/Gemm/MatMul nodes"
        if self.share_flops is None:
            return f"FP16 share of FLOPs unknown: no float arithmetic estimated ({nodes})"
        return f"FP16 runs {fmt_share(self.share_flops)} of the estimated FLOPs ({nodes})"


def fmt_share(share: float | None) -> str:
    """A share in 0..1 as a percentage that never rounds a non-zero share to 0% nor a partial
    one to 100% (``0.004`` → ``0.4%``, ``0.9996`` → ``99.96%``); None → ``?``."""
    if share is None:
        return "?"
    pct = 100.0 * share
    if pct <= 0.0 or pct >= 100.0:
        return f"{pct:.0f}%"
    for digits in (0, 1, 2, 3):
        text = f"{pct:.{digits}f}"
        if 0.0 < float(text) < 100.0:
            return f"{text}%"
    return f"{pct:.3g}%"


def fp16_share(costs: Mapping[str, NodeCost], fp32_nodes: Iterable[str]) -> FP16Share:
    """The share of ``costs``' float arithmetic that runs in FP16 when ``fp32_nodes`` stay FP32.

    Args:
        costs: :func:`node_costs` of the planned model.
        fp32_nodes: names of the nodes kept in FP32 (names not in ``costs``, e.g. nodes inside
            subgraphs, are ignored).
    """
    fp32 = set(fp32_nodes)
    total = fp16 = 0.0
    compute_total = compute_fp16 = 0
    for name, cost in costs.items():
        if cost.op_type in INTEGER_OPS:
            continue
        total += cost.flops
        if cost.compute:
            compute_total += 1
        if name not in fp32:
            fp16 += cost.flops
            compute_fp16 += int(cost.compute)
    return FP16Share(
        flops_total=total,
        flops_fp16=fp16,
        share_flops=(fp16 / total) if total > 0 else None,
        compute_nodes_total=compute_total,
        compute_nodes_fp16=compute_fp16,
        nodes_total=len(costs),
        nodes_fp32=len(fp32 & set(costs)),
    )


def fp32_cost(costs: Mapping[str, NodeCost], fp32_nodes: Iterable[str]) -> float:
    """Estimated FLOPs of the nodes ``fp32_nodes`` (names not in ``costs`` cost nothing)."""
    return float(sum(costs[n].flops for n in set(fp32_nodes) if n in costs))


def node_costs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, NodeCost]:
    """Estimate the cost of every node of ``model``'s main graph (see the module docstring).

    Args:
        model: the model, weights loaded or not (``fp16guard.io.model.load_graph`` is enough;
            nothing is read from external data). Not modified. Nodes are keyed by name; an unnamed
            node by ``<op_type>_<index>`` as :func:`fp16guard.io.model.normalize_model` names it.
        input_shapes: concrete shape of some graph inputs (e.g. one calibration sample's),
            replacing their declared dimensions; None or a missing input: symbolic and unknown
            dimensions are 1.

    Returns:
        ``{node name: NodeCost}`` in graph order.
    """
    inferred = _inferred_copy(model, input_shapes or {})
    shapes, types = _value_facts(inferred.graph)
    _add_declared(model.graph, shapes, types)
    consts = _small_constants(model.graph)
    out: dict[str, NodeCost] = {}
    seen: set[str] = set()
    for index, (node, inode) in enumerate(zip(model.graph.node, _nodes_like(inferred.graph, model.graph))):
        name = node.name or f"{node.op_type}_{index}"
        base, k = name, 2
        while name in seen:
            name, k = f"{base}__{k}", k + 1
        seen.add(name)
        out[name] = _node_cost(name, inode, shapes, types, consts)
    return out


# --- shapes ------------------------------------------------------------------------------------


def _inferred_copy(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A weight-free copy of ``model`` with concrete graph-input shapes, annotated by shape
    inference (best effort: the uninferred copy when inference fails)."""
    graph = model.graph
    shell = onnx.ModelProto()
    shell.ir_version = model.ir_version
    shell.opset_import.extend(model.opset_import)
    shell.functions.extend(model.functions)
    g = shell.graph
    g.name = graph.name
    g.node.extend(_light_node(node) for node in graph.node)
    g.output.extend(graph.output)
    init_names = {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name in init_names:
            continue
        g.input.append(_concrete_input(vi, input_shapes.get(vi.name)))
    for tensor in graph.initializer:
        small = tensor.data_location != TensorProto.EXTERNAL and tensor.ByteSize() <= _KEEP_INIT_BYTES
        if small:
            g.initializer.append(tensor)
        else:
            g.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for sparse in graph.sparse_initializer:
        g.input.append(helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type, list(sparse.dims)))
    try:
        return onnx.shape_inference.infer_shapes(shell, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - costs are an estimate: fall back to what is declared
        return shell


def _light_node(node: onnx.NodeProto) -> onnx.NodeProto:
    """``node`` itself, or a copy whose large Constant value keeps its type and dims but no data
    (shape inference needs no more; the payload is never copied)."""
    big = [a for a in node.attribute if a.type == AttributeProto.TENSOR and a.t.ByteSize() > _KEEP_INIT_BYTES]
    if node.op_type != "Constant" or not big:
        return node
    light = onnx.NodeProto(name=node.name, op_type=node.op_type, domain=node.domain, input=node.input, output=node.output)
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR and attr.t.ByteSize() > _KEEP_INIT_BYTES:
            stub = TensorProto(name=attr.t.name, data_type=attr.t.data_type, dims=attr.t.dims)
            stub.data_location = TensorProto.EXTERNAL
            stub.external_data.add(key="location", value="not-loaded")
            light.attribute.add(name=attr.name, type=AttributeProto.TENSOR, t=stub)
        else:
            light.attribute.append(attr)
    return light


def _concrete_input(vi: onnx.ValueInfoProto, given: Sequence[int] | None) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    if vi.type.WhichOneof("value") != "tensor_type":
        return out
    tensor_type = out.type.tensor_type
    if given is not None:
        tensor_type.shape.Clear()
        for d in given:
            tensor_type.shape.dim.add().dim_value = max(int(d), 0)
        return out
    if tensor_type.HasField("shape"):
        for dim in tensor_type.shape.dim:
            if not (dim.HasField("dim_value") and dim.dim_value > 0):
                dim.Clear()
                dim.dim_value = 1
    return out


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[Shape | None, int]:
    if vi.type.WhichOneof("value") != "tensor_type":
        return None, 0
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None, tt.elem_type
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    return dims, tt.elem_type


def _value_facts(graph: onnx.GraphProto, shapes: dict | None = None, types: dict | None = None) -> tuple[dict, dict]:
    """Shapes and element types of every value of ``graph`` and of its subgraphs."""
    shapes = {} if shapes is None else shapes
    types = {} if types is None else types
    _record(graph, list(graph.input) + list(graph.value_info) + list(graph.output), shapes, types)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR and node.output:
                    shapes.setdefault(node.output[0], tuple(int(d) for d in attr.t.dims))
                    types.setdefault(node.output[0], attr.t.data_type)
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                _value_facts(attr.g, shapes, types)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _value_facts(sub, shapes, types)
    return shapes, types


def _add_declared(graph: onnx.GraphProto, shapes: dict, types: dict) -> None:
    """Declared facts of the original model where inference gave none (custom ops)."""
    _record(graph, list(graph.value_info) + list(graph.output), shapes, types)


def _record(graph: onnx.GraphProto, values: list, shapes: dict, types: dict) -> None:
    """Shapes and element types of ``values`` and of ``graph``'s initializers, where not known yet."""
    for vi in values:
        shape, elem = _shape_of(vi)
        if elem:
            types.setdefault(vi.name, elem)
        if shape is not None and vi.name not in shapes:
            shapes[vi.name] = shape
    for tensor in graph.initializer:
        shapes.setdefault(tensor.name, tuple(int(d) for d in tensor.dims))
        types.setdefault(tensor.name, tensor.data_type)


def _small_constants(graph: onnx.GraphProto) -> dict[str, list]:
    """Values of small integer constants (a Loop's trip count), by name."""
    out: dict[str, list] = {}
    tensors = [t for t in graph.initializer if t.data_location != TensorProto.EXTERNAL and t.ByteSize() <= 64]
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            tensors += [onnx.TensorProto(name=node.output[0], data_type=a.t.data_type, dims=a.t.dims, raw_data=a.t.raw_data,
                                         int64_data=a.t.int64_data, int32_data=a.t.int32_data)
                        for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR and a.t.ByteSize() <= 64]
    for tensor in tensors:
        if tensor.data_type in (TensorProto.INT64, TensorProto.INT32):
            try:
                out[tensor.name] = [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
            except Exception:  # noqa: BLE001
                continue
    return out


def _nodes_like(inferred: onnx.GraphProto, original: onnx.GraphProto):
    """The inferred copy's nodes (same order, with subgraph annotations) when it kept them all."""
    if len(inferred.node) == len(original.node):
        return list(inferred.node)
    return list(original.node)


# --- per-node cost -----------------------------------------------------------------------------


def _numel(shape: Shape | None) -> int | None:
    if shape is None:
        return None
    return math.prod(1 if d is None else max(d, 0) for d in shape)


def _dim(shape: Shape | None, axis: int, default: int = 1) -> int:
    if not shape or not -len(shape) <= axis < len(shape) or shape[axis] is None:
        return default
    return shape[axis]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _node_cost(name: str, node: onnx.NodeProto, shapes: dict, types: dict, consts: dict) -> NodeCost:
    def shape(i: int, outputs: bool = False) -> Shape | None:
        names = node.output if outputs else node.input
        return shapes.get(names[i]) if i < len(names) and names[i] else None

    float_elems = 0
    known = False
    for value in list(node.input) + list(node.output):
        if value and value in shapes:
            known = True
            if types.get(value) in _FLOAT_TYPES:
                float_elems += _numel(shapes[value]) or 0
    nbytes = float(float_elems * _BYTES_PER_ELEMENT)
    op = node.op_type
    if op in _SUBGRAPH_OPS:
        flops, compute = _subgraph_cost(node, shapes, types, consts)
        return NodeCost(name, op, max(flops, NOMINAL_FLOPS), nbytes, compute)
    compute = op in COMPUTE_OPS
    try:
        flops = _flops(node, shape) if (known or compute) else None
    except Exception:  # noqa: BLE001 - an odd node costs the nominal amount, never a crash
        flops = None
    return NodeCost(name, op, max(float(flops or 0.0), NOMINAL_FLOPS), nbytes, compute)


def _flops(node: onnx.NodeProto, shape: Callable[..., Shape | None]) -> float | None:
    op = node.op_type
    out = shape(0, True)
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "NhwcConv"):
        w = shape(3 if op == "QLinearConv" else 1)
        if w is None:
            return None
        per_output = _numel(w[1:])  # C_in / group × kernel
        if out is None:
            return 2.0 * (_numel(w) or 0)  # at least one output position
        return 2.0 * _numel(out) * per_output  # output elements × (C_in / group × kernel)
    if op in ("ConvTranspose", "QLinearConvTranspose"):
        x, w = shape(0), shape(3 if op == "QLinearConvTranspose" else 1)
        if w is None:
            return None
        return 2.0 * (_numel(x) if x is not None else _dim(w, 0)) * _numel(w[1:])
    if op in ("Gemm", "FusedGemm", "QGemm"):
        a = shape(0)
        k_from_b = shape(3 if op == "QGemm" else 1)
        trans_a = bool(_attr(node, "transA", 0))
        trans_b = bool(_attr(node, "transB", 0))
        k = _dim(a, 0 if trans_a else 1, default=0) or _dim(k_from_b, 1 if trans_b else 0)
        if out is None:
            out = (_dim(a, 1 if trans_a else 0), _dim(k_from_b, 0 if trans_b else 1))
        return 2.0 * _numel(out) * k
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "DynamicQuantizeMatMul", "MatMulNBits"):
        a = shape(0)
        b = shape(3 if op == "QLinearMatMul" else 1)
        if op == "MatMulNBits":
            k = int(_attr(node, "K", 0) or 0) or _dim(a, -1)
            n = int(_attr(node, "N", 0) or 0) or 1
            rows = (_numel(a) // max(_dim(a, -1), 1)) if a else 1
            return 2.0 * rows * k * n
        trans_a = op == "FusedMatMul" and bool(_attr(node, "transA", 0))
        k = _dim(a, -2 if trans_a else -1, default=0) if a else 0
        if not k and b:
            k = _dim(b, 0 if len(b) == 1 else -2)
        if a is None and b is None and out is None:
            return None
        if out is None or out[-1:] in ((None,), ()):
            # Output elements from what is known: the rows of A (else 1) times the columns of B.
            rows = (_numel(a) // max(_dim(a, -1), 1)) if a and len(a) > 1 else 1
            cols = _dim(b, -1) if b and len(b) > 1 else 1
            out = (rows, cols)
        return 2.0 * _numel(out) * max(k, 1)
    if op == "Einsum":
        equation = _attr(node, "equation", b"")
        equation = equation.decode() if isinstance(equation, bytes) else str(equation)
        return 2.0 * _einsum_macs(equation, [shape(i) for i in range(len(node.input))], out)
    if op in _RNNS:
        x, w, r = shape(0), shape(1), shape(2)
        if w is None or r is None:
            return None
        layout = int(_attr(node, "layout", 0) or 0)
        seq = _dim(x, 1 if layout else 0)
        batch = _dim(x, 0 if layout else 1)
        directions, gates_h, input_size = _dim(w, 0), _dim(w, 1), _dim(w, 2)
        hidden = _dim(r, 2)
        return 2.0 * seq * batch * directions * gates_h * (input_size + hidden)
    if op in ("Attention", "MultiHeadAttention", "GroupQueryAttention", "DecoderMaskedMultiHeadAttention"):
        return _attention_flops(node, shape, out)
    if op in MOVEMENT_OPS:
        return 0.0
    if op in _REDUCTIONS:
        x = shape(0)
        return float(_numel(x if x is not None else out) or 0)
    if op in _POOLS:
        kernel = _attr(node, "kernel_shape", None) or []
        return float((_numel(out) or 0) * math.prod(int(k) for k in kernel))
    elems = _numel(out)
    if elems is None:
        return None
    return PER_ELEMENT_FLOPS.get(op, 1.0) * elems


def _einsum_macs(equation: str, inputs: list[Shape | None], out: Shape | None) -> float:
    """Multiply-accumulates of an Einsum: output elements × sizes of the summed-over letters."""
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    sizes: dict[str, int] = {}
    for term, shp in zip(terms, inputs):
        if shp is None:
            continue
        letters = term.replace("...", "")
        if "..." in term:
            head = term.index("...")
            tail = len(term) - head - 3
            named = list(term[:head]) + [None] * (len(shp) - head - tail) + list(term[len(term) - tail:] if tail else [])
        else:
            named = list(letters)
        for letter, dim in zip(named, shp):
            if letter is not None and dim is not None:
                sizes[letter] = max(sizes.get(letter, 1), dim)
    if not _:
        counts: dict[str, int] = {}
        for c in lhs.replace(",", "").replace(".", ""):
            counts[c] = counts.get(c, 0) + 1
        rhs = "".join(sorted(c for c, n in counts.items() if n == 1))
    in_letters = set(re.sub(r"[^A-Za-z]", "", lhs))
    summed = in_letters - set(re.sub(r"[^A-Za-z]", "", rhs))
    out_elems = _numel(out) if out is not None else math.prod(sizes.get(c, 1) for c in set(re.sub(r"[^A-Za-z]", "", rhs)))
    return float(out_elems * math.prod(sizes.get(c, 1) for c in summed))


def _attention_flops(node: onnx.NodeProto, shape: Callable[..., Shape | None], out: Shape | None) -> float | None:
    q = shape(0)
    if q is None:
        return None
    if node.op_type == "Attention" and node.domain == "com.microsoft":
        # input [B, S, I], weights [I, 3H]: projections, then QK^T and PV over S×S.
        w = shape(1)
        batch, seq, width = _dim(q, 0), _dim(q, 1), _dim(q, 2)
        proj = _dim(w, 1, default=3 * width)
        hidden = proj // 3 or width
        return 2.0 * (batch * seq * width * proj + 2 * batch * seq * seq * hidden)
    k = shape(1)
    if k is None:
        length = _dim(q, -2) if len(q) == 4 else _dim(q, 1)
    else:
        length = _dim(k, -2) if len(k) == 4 else _dim(k, 1)
    return 2.0 * 2 * _numel(q) * length  # QK^T and PV, each Q-elements × key length


def _subgraph_cost(node: onnx.NodeProto, shapes: dict, types: dict, consts: dict) -> tuple[float, bool]:
    """FLOPs of an If/Loop/Scan's body (the larger If branch; a Loop with a constant trip count
    that many times) and whether it holds a compute op."""
    branches: list[tuple[float, bool]] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs) if attr.type == AttributeProto.GRAPHS else []
        for sub in graphs:
            sub_consts = {**consts, **_small_constants(sub)}
            flops, compute = 0.0, False
            for index, inner in enumerate(sub.node):
                cost = _node_cost(inner.name or f"{inner.op_type}_{index}", inner, shapes, types, sub_consts)
                flops += cost.flops
                compute = compute or cost.compute
            branches.append((flops, compute))
    if not branches:
        return 0.0, False
    flops = max(b[0] for b in branches)
    compute = any(b[1] for b in branches)
    if node.op_type == "Loop" and node.input and node.input[0] in consts:
        trips = consts[node.input[0]]
        if len(trips) == 1 and 0 < trips[0] < 2**31:
            flops *= trips[0]
    elif node.op_type == "Scan":
        # The body runs once per slice of the first scan input along its scan axis.
        count = len([a for a in node.attribute if a.name == "num_scan_inputs"]) and int(_attr(node, "num_scan_inputs", 0))
        first_scan = len(node.input) - count if count else None
        if first_scan is not None and first_scan < len(node.input):
            axes = _attr(node, "scan_input_axes", None) or [0]
            steps = _dim(shapes.get(node.input[first_scan]), int(axes[0]), default=1)
            flops *= max(steps, 1)
    return flops, compute


def share_for_run(model_path: str, fp32_nodes: Iterable[str], sample=None) -> FP16Share:
    """:func:`fp16_share` of a run: costs of the model at ``model_path`` (graph only, weights
    never read) at the shapes of ``sample`` (a :class:`fp16guard.io.shards.ShardRef`, e.g. the
    first calibration shard; only its array headers are read), with ``fp32_nodes`` in FP32.

    The costs are those of the FP32 model as given; a plan made on a folded model (BatchNorm
    folded into its Conv) names the same compute nodes, and nodes it names that the model
    lacks are ignored.
    """
    from fp16guard.io.model import load_graph

    model = load_graph(model_path)
    shapes: dict[str, Sequence[int]] = {}
    if sample is not None:
        from fp16guard.io.shards import peek_shard

        inputs = {vi.name: vi for vi in model.graph.input}
        for name, (_dtype, shape) in peek_shard(sample).items():
            vi = inputs.get(name)
            if vi is not None and len(shape) == len(vi.type.tensor_type.shape.dim):
                shapes[name] = tuple(int(d) for d in shape)
    return fp16_share(node_costs(model, shapes), fp32_nodes)
