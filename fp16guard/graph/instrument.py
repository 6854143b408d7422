"""Statistics inside the graph: append per-tensor reductions so one inference returns scalars only.

For every float tensor of the main graph the instrumented model returns three scalars:

* ``min`` = ReduceMin(t) and ``max`` = ReduceMax(t) over all elements (max |x| = max(-min, max));
* a *non-finite flag* = ReduceSum(t): NaN/inf in ``t`` makes it non-finite (IEEE addition always
  propagates NaN, whereas ORT's ReduceMin/Max may skip a NaN). A sum can also overflow to inf on
  huge finite values, so a flag is only a suspicion: callers confirm it with the exact count of
  :func:`instrument` ``(exact_counts=True)`` (IsNaN/IsInf, full-size temporaries), run only on
  the rare slice that raised the flag.

Reductions read their tensor once and allocate nothing of its size, so memory does not depend on
activation size (NOTES #10: ``ReduceMax(Abs(t))`` allocates a full-size ``Abs`` temporary).
A ``Relu`` whose input is instrumented gets its statistics from its input's scalars
(min = max(min_in, 0), max = max(max_in, 0); finite in, finite out), which saves three passes
over every post-activation tensor.

Reductions are written without ``axes`` (all axes) and with ``keepdims=0``, which means the same
from opset 1 to the newest, so no opset-specific form (attribute before 18, input from 18) is
needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx
from onnx import TensorProto, helper

from fp16guard.graph.info import tensor_types as graph_tensor_types
from fp16guard.io.model import FLOAT_TYPES

#: Prefix of every name the instrumentation adds (outputs, nodes, initializers).
PREFIX = "fp16guard_stats"


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


def instrument(model: onnx.ModelProto, tensors: Sequence[TensorInfo], exact_counts: bool = False) -> onnx.ModelProto:
    """Return a copy of ``model`` whose only outputs are per-tensor statistics (scalars).

    For tensor ``k`` of ``tensors`` the outputs are named by :func:`output_names` ``(k)``:
    ``min`` and ``max`` (float32 scalars) and ``nonfinite``: with ``exact_counts=False`` a float32
    flag, non-finite iff the tensor may hold NaN/inf; with ``exact_counts=True`` the exact int64
    number of NaN/inf elements (allocates full-size boolean temporaries; use for diagnosis only).

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

    producers = {name: node for node in graph.node for name in node.output}
    by_name = {t.name: k for k, t in enumerate(tensors)}
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
        if not exact_counts and relu_input in by_name and tensors[by_name[relu_input]].elem_type == TensorProto.FLOAT:
            imn, imx, inf_ = output_names(by_name[relu_input])
            node("Max", [imn, zero], mn)
            node("Max", [imx, zero], mx)
            node("Identity", [inf_], nf)
        else:
            x = info.name
            if info.elem_type != TensorProto.FLOAT:
                x = node("Cast", [x], f"{PREFIX}/{k}/as_float", to=TensorProto.FLOAT)
            node("ReduceMin", [x], mn, keepdims=0)
            node("ReduceMax", [x], mx, keepdims=0)
            if exact_counts:
                nan = node("IsNaN", [x], f"{PREFIX}/{k}/isnan")
                inf = node("IsInf", [x], f"{PREFIX}/{k}/isinf")
                bad = node("Or", [nan, inf], f"{PREFIX}/{k}/bad")
                as_int = node("Cast", [bad], f"{PREFIX}/{k}/bad_int", to=TensorProto.INT64)
                node("ReduceSum", [as_int], nf, keepdims=0)
            else:
                node("ReduceSum", [x], nf, keepdims=0)
        outputs.append(helper.make_tensor_value_info(mn, TensorProto.FLOAT, []))
        outputs.append(helper.make_tensor_value_info(mx, TensorProto.FLOAT, []))
        outputs.append(helper.make_tensor_value_info(nf, TensorProto.INT64 if exact_counts else TensorProto.FLOAT, []))
    graph.node.extend(new_nodes)
    graph.output.extend(outputs)
    return out
