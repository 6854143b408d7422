"""FP16 storage emulation: an FP32 model that rounds every formerly-FP16 tensor through FP16.

ONNX Runtime's CPU provider computes FP16 nodes in FP32 and hides FP16 overflow (docs/FACTS.md #1).
Rounding each FP16 tensor through FP16 storage (``Cast(to=FLOAT16)`` then ``Cast(to=FLOAT)``)
with the arithmetic in FP32 reproduces it faithfully: values above 65504 become inf, small ones
lose precision, exactly as stored FP16 activations would (docs/FACTS.md #2; tensor cores accumulate in
FP32 as well). The rounding pair is a real computation in the graph; ONNX Runtime does not fold
it away at any optimisation level (``tests/test_emulate.py`` checks level "all").

Contract of :func:`emulate_fp16_storage`:

* Requires a valid model (weights loaded); typically the output of
  :func:`fp16guard.graph.convert.to_mixed_precision`. Returns a new model; the input is not modified.
* FLOAT16 initializers, Constant/ConstantOfShape values and ``dtype`` attributes become FLOAT
  (exact: every FP16 value is an FP32 value).
* Every FLOAT16 tensor produced by a node is now produced in FLOAT under the name
  ``<tensor>__fp32``, rounded to ``<tensor>__fp16`` and cast back to FLOAT under its original
  name, so readers are unchanged. A ``Cast(to=FLOAT16)`` node already rounds: it keeps its
  ``to`` and writes ``<tensor>__fp16``, followed by a Cast back to FLOAT.
* Graph inputs and outputs keep their declared names and types: a FLOAT16 graph input is cast to
  FLOAT (``<input>__fp32``) for its readers; a FLOAT16 graph output is the rounded FP16 tensor
  itself, and readers inside the graph read its FLOAT copy (``<output>__fp32``).
* Subgraphs are processed the same way (their own inputs and outputs become FLOAT, as they are
  not model I/O), with types from ONNX inference: the bodies of a subgraph node that
  :func:`~fp16guard.graph.convert.to_mixed_precision` ran in FP16 get every FLOAT16 tensor
  rounded too (``tests/test_subgraph_fp16.py``). onnxruntime's weight fusions are emulated in
  the main graph only (:mod:`fp16guard.graph.ort_fusions`), not inside bodies.
* New names get ``_2``, ``_3``... if taken. The result is checked with
  ``onnx.checker.check_model(full_check=True)`` (skipped above 2 GB).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from fp16guard.errors import ModelError
from fp16guard.graph.info import (
    NameAllocator,
    all_names,
    graph_elem_types,
    inferred_skeleton,
    opset_map,
    rename_outer_refs,
)
from fp16guard.io.model import PROTOBUF_LIMIT

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
#: Ops whose FLOAT outputs hold exactly the (already FP16) values of an attribute: no rounding.
_EXACT_OPS = frozenset({"Constant", "ConstantOfShape"})


def _to_float(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ModelError(f"tensor {tensor.name!r} has external data that is not loaded; expected a model loaded with its weights")
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def emulate_fp16_storage(model: onnx.ModelProto, check: bool = True) -> onnx.ModelProto:
    """Turn a model with FLOAT16 tensors into an FP32 model with FP16 storage rounding.

    Args:
        model: any valid ONNX model (not modified).
        check: run the full ONNX checker on the result (default True).

    Returns:
        The emulation model. Running it on the CPU provider gives the values an FP16 execution
        would store, including inf where FP16 overflows.

    Raises:
        ModelError: a FLOAT16 tensor's external data is not loaded.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    inferred = inferred_skeleton(model)
    alloc = NameAllocator(all_names(model))
    _emulate_graph(result.graph, inferred.graph, alloc, main=True, opsets=opset_map(model))
    if check and result.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(result, full_check=True)
    return result


def _cast(source: str, target: str, to: int, alloc: NameAllocator) -> onnx.NodeProto:
    return helper.make_node("Cast", [source], [target], name=alloc.new(f"{target}__cast"), to=to)


def _emulate_graph(graph: onnx.GraphProto, inferred: onnx.GraphProto, alloc: NameAllocator, main: bool, opsets: dict[str, int]) -> None:
    # The op schemas type what inference cannot (function ops): an FP16 tensor left untyped
    # would go unrounded, and the emulation would be kinder than real FP16.
    elem = graph_elem_types(graph, inferred, opsets)
    outputs16 = {o.name for o in graph.output if o.type.tensor_type.elem_type == FLOAT16} if main else set()
    rename: dict[str, str] = {}  # readers of key read value instead
    prefix: list[onnx.NodeProto] = []

    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == FLOAT16:
            converted = _to_float(tensor)
            if tensor.name in outputs16:
                # The FP16 output must stay FP16: keep a FLOAT copy for readers.
                converted.name = alloc.new(f"{tensor.name}__fp32")
                rename[tensor.name] = converted.name
                graph.initializer.append(converted)
            else:
                tensor.CopyFrom(converted)
    for value in graph.input:
        if value.type.tensor_type.elem_type == FLOAT16:
            if main:
                target = alloc.new(f"{value.name}__fp32")
                prefix.append(_cast(value.name, target, FLOAT, alloc))
                rename[value.name] = target
            else:
                value.type.tensor_type.elem_type = FLOAT
    if not main:
        for value in graph.output:
            if value.type.tensor_type.elem_type == FLOAT16:
                value.type.tensor_type.elem_type = FLOAT

    new_nodes = list(prefix)
    for node, inferred_node in zip(list(graph.node), inferred.node):
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
        sub_pairs = _subgraph_pairs(node, inferred_node)
        for sub, inferred_sub in sub_pairs:
            rename_outer_refs(sub, rename)
            _emulate_graph(sub, inferred_sub, alloc, main=False, opsets=opsets)
        _attributes_to_float(node)
        after: list[onnx.NodeProto] = []
        is_cast16 = node.op_type == "Cast" and any(a.name == "to" and a.i == FLOAT16 for a in node.attribute)
        for k, out in enumerate(node.output):
            if not out or elem.get(out) != FLOAT16:
                continue
            is_output = out in outputs16
            if is_cast16:
                if is_output:  # the Cast's FP16 result is the graph output; readers get a FLOAT copy
                    rename[out] = alloc.new(f"{out}__fp32")
                    after.append(_cast(out, rename[out], FLOAT, alloc))
                else:
                    node.output[k] = alloc.new(f"{out}__fp16")
                    after.append(_cast(node.output[k], out, FLOAT, alloc))
            elif node.op_type in _EXACT_OPS:
                if is_output:
                    node.output[k] = rename[out] = alloc.new(f"{out}__fp32")
                    after.append(_cast(node.output[k], out, FLOAT16, alloc))
            else:
                node.output[k] = alloc.new(f"{out}__fp32")
                if is_output:
                    rename[out] = alloc.new(f"{out}__fp32")
                    after.append(_cast(node.output[k], out, FLOAT16, alloc))
                    after.append(_cast(out, rename[out], FLOAT, alloc))
                else:
                    rounded = alloc.new(f"{out}__fp16")
                    after.append(_cast(node.output[k], rounded, FLOAT16, alloc))
                    after.append(_cast(rounded, out, FLOAT, alloc))
        new_nodes.append(node)
        new_nodes.extend(after)
    del graph.node[:]
    graph.node.extend(new_nodes)
    for value in graph.value_info:
        if value.type.tensor_type.elem_type == FLOAT16 and value.name not in outputs16:
            value.type.tensor_type.elem_type = FLOAT


def _subgraph_pairs(node: onnx.NodeProto, inferred_node: onnx.NodeProto) -> list[tuple[onnx.GraphProto, onnx.GraphProto]]:
    pairs = []
    inferred_attrs = {a.name: a for a in inferred_node.attribute}
    for attr in node.attribute:
        twin = inferred_attrs.get(attr.name)
        if attr.type == AttributeProto.GRAPH:
            pairs.append((attr.g, twin.g if twin is not None else attr.g))
        elif attr.type == AttributeProto.GRAPHS:
            twins = list(twin.graphs) if twin is not None else list(attr.graphs)
            pairs.extend(zip(attr.graphs, twins))
    return pairs


def _attributes_to_float(node: onnx.NodeProto) -> None:
    """Switch FLOAT16-typed attributes (constant values, ``dtype``) of ``node`` to FLOAT."""
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR and attr.t.data_type == FLOAT16 and node.op_type in _EXACT_OPS:
            attr.t.CopyFrom(_to_float(attr.t))
        elif attr.name == "dtype" and attr.type == AttributeProto.INT and attr.i == FLOAT16:
            attr.i = FLOAT
