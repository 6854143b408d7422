"""Mixed-precision conversion: FP16 everywhere except the plan's FP32 nodes.

This pass is written here rather than taken from onnxconverter-common, whose
``convert_float_to_float16`` clamps weights to ±1e4 by default (silently changing the model,
docs/FACTS.md #5), renames tensors and does not keep node output names, so statistics and plans would no
longer map onto the artifact by name.

Contract of :func:`to_mixed_precision`:

* Requires a valid model whose weights are loaded (FLOAT initializers read by FP16 nodes are
  converted); node names unique (as :func:`fp16guard.io.model.load_model` makes them).
* Returns a new model; the input model is not modified.
* A node runs in FP16 when it is not in ``fp32_nodes`` and :func:`fp16guard.graph.info.fp16_slots`
  allows it (custom domains, untyped values and ops whose schema excludes float16 stay FP32
  whatever the caller asks). Shape/Size follow their producer's precision.
* **Subgraph nodes** (If/Loop/Scan) run in FP16 as a whole when not in ``fp32_nodes``: their float
  inputs and outputs are FLOAT16 at the border (Casts outside as for any node), and each body is
  converted by the same rules with every node that can run in FP16 in FP16 (nested subgraph
  nodes included): float body inputs and outputs become FLOAT16 (so Loop-carried and Scan state
  keep one type across iterations; a body output made by an FP32 node goes through a Cast),
  body initializers and Constants read in FP16 are converted, and body nodes that cannot run in
  FP16 stay FP32 with Casts around them inside the body. Enclosing-scope float tensors a body
  reads are resolved in the enclosing graph in the type each body reader needs: a Cast placed
  there before the subgraph node (``<tensor>__to_fp16``), or, for a FLOAT weight, an FP16 copy
  ``<weight>__fp16`` (the FP32 original is dropped when nothing reads it any more); the body
  reads the new name. The plan names main-graph nodes only: a body is FP16 or FP32 with its node.
* Only FLOAT tensors change type; FLOAT16, BFLOAT16 and DOUBLE tensors are left alone. An FP16
  node's FLOAT slots bound to a type constraint become FLOAT16; slots with a literal
  ``tensor(float)`` type (Resize ``scales``) stay FLOAT.
* One Cast per tensor per direction at every precision border, inserted just before the first
  consumer that needs it and shared by all later consumers. Cast tensors are named
  ``<tensor>__to_fp16`` / ``<tensor>__to_fp32`` and their nodes ``<tensor>__cast_to_fp16`` /
  ``<tensor>__cast_to_fp32`` (``_2``, ``_3``... appended if a name is taken anywhere in the model).
* FLOAT initializers read by FP16 nodes are converted to FLOAT16 in place (same name), or, when
  FP32 nodes, subgraphs or graph outputs also read them, duplicated as ``<name>__fp16``. Values
  beyond ±65504 become ±inf: nothing is clamped (the plan keeps their readers FP32).
* Constant / ConstantOfShape values, ``Cast(to=FLOAT)``, and ``dtype`` attributes of FP16 nodes
  are switched to FLOAT16.
* Graph inputs and outputs keep their declared types and names; a FLOAT graph input read by an
  FP16 node goes through a Cast. **The one renamed tensor**: when a FLOAT graph output ``y`` is
  produced by an FP16 node, that node's output becomes ``y__fp16`` and a Cast(to=FLOAT) named
  ``y__cast_to_fp32`` produces ``y``; FP16 consumers read ``y__fp16``, FP32 consumers ``y``.
  Every other node keeps its name and its output tensor names.
* Subgraphs of FP32 nodes are left as they are; those that read an outer-scope tensor now in
  FLOAT16 read its FP32 Cast.
* ``value_info`` entries follow the new types (those declaring a converted weight included);
  Cast outputs get entries where shapes are known.
* External data: tensors that are not converted keep their external references.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from fp16guard.errors import ConfigError, ModelError
from fp16guard.graph.info import (
    NameAllocator,
    TypeInfo,
    _defined_in,
    all_names,
    body_border,
    fp16_slots,
    inferred_skeleton,
    opset_map,
    outer_refs,
    propagate_by_schema,
    rename_outer_refs,
    subgraphs,
    tensor_types,
)
from fp16guard.io.model import PROTOBUF_LIMIT

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
_SUFFIX = {FLOAT: "fp32", FLOAT16: "fp16"}
#: Ops whose output type comes from a ``dtype`` attribute that defaults to FLOAT when absent.
_DTYPE_DEFAULTS_FLOAT = frozenset({"RandomNormal", "RandomUniform"})


def to_fp16_tensor(tensor: onnx.TensorProto, name: str | None = None) -> onnx.TensorProto:
    """A FLOAT16 copy of a FLOAT tensor proto (no clamping: beyond ±65504 becomes ±inf).

    Raises:
        ModelError: the tensor's external data is not loaded.
    """
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ModelError(
            f"initializer {tensor.name!r} has external data that is not loaded; expected a model loaded with its weights (load_model(path))"
        )
    with np.errstate(over="ignore"):
        array = numpy_helper.to_array(tensor).astype(np.float16)
    return numpy_helper.from_array(array, tensor.name if name is None else name)


def to_mixed_precision(model: onnx.ModelProto, fp32_nodes: set[str], check: bool = True) -> onnx.ModelProto:
    """Build the mixed-precision model (see the module docstring for the full contract).

    Args:
        model: the FP32 model (not modified).
        fp32_nodes: names of main-graph nodes that stay FP32 (``Plan.fp32_names``).
        check: run ``onnx.checker.check_model(full_check=True)`` on the result (default True;
            skipped for models above 2 GB, which the in-memory checker cannot take).

    Returns:
        A new ``ModelProto``.

    Raises:
        ConfigError: ``fp32_nodes`` names a node that is not in the model's main graph.
        ModelError: an initializer that must be converted has unloaded external data.
    """
    unknown = sorted(set(fp32_nodes) - {n.name for n in model.graph.node})
    if unknown:
        raise ConfigError(f"plan names nodes {unknown[:5]} that are not in the model; expected names of main-graph nodes (was the plan made for another model?)")
    types = tensor_types(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    env = _Env(model, opset_map(model), NameAllocator(all_names(model)))
    _convert_graph(result.graph, types, env, set(fp32_nodes), env.main_twin, None)
    if check and result.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(result, full_check=True)
    return result


class _Env:
    """What every (sub)graph conversion shares: opsets, the name allocator, and the inferred copy
    of the model (computed only when a subgraph node runs in FP16: its bodies' types)."""

    def __init__(self, model: onnx.ModelProto, opsets: dict[str, int], alloc: NameAllocator) -> None:
        self.model, self.opsets, self.alloc = model, opsets, alloc
        self._inferred: onnx.GraphProto | None = None

    def main_twin(self) -> onnx.GraphProto:
        if self._inferred is None:
            self._inferred = inferred_skeleton(self.model).graph
        return self._inferred


def _body_types(node: onnx.NodeProto, sub: onnx.GraphProto, twin: onnx.GraphProto, outer: TypeInfo, opsets: dict[str, int]) -> TypeInfo:
    """Element types visible in body ``sub`` of ``node``: the enclosing scope's (original) types,
    then the body's own declarations and inferred annotations (``twin``), the node's border for
    body inputs/outputs left untyped, then the op schemas."""
    info = TypeInfo(elem=dict(outer.elem), non_tensor=set(outer.non_tensor), value_info={})
    for g in (twin, sub):
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            which = vi.type.WhichOneof("value")
            if which == "tensor_type" and vi.type.tensor_type.elem_type:
                info.elem[vi.name] = vi.type.tensor_type.elem_type
                info.non_tensor.discard(vi.name)
            elif which is not None and which != "tensor_type":
                info.non_tensor.add(vi.name)
                info.elem.pop(vi.name, None)
    for tensor in sub.initializer:
        info.elem[tensor.name] = tensor.data_type
    for name, bound in body_border(node, sub).items():
        if name not in info.elem and name not in info.non_tensor and bound in outer.elem:
            info.elem[name] = outer.elem[bound]
    propagate_by_schema(sub, info.elem, info.non_tensor, opsets)
    return info


class _Scope:
    """How a body reaches the graph around it: ``resolve(name, type)`` gives the name of an
    enclosing tensor's version in that type (a Cast placed there, before the subgraph node, when
    it is new); ``native(name)`` its type there now."""

    def __init__(self, resolve, native) -> None:
        self.resolve, self.native = resolve, native


def _convert_graph(graph: onnx.GraphProto, types: TypeInfo, env: _Env, keep32: set[str] | None, twin, outer: _Scope | None) -> None:
    """Convert one graph in place.

    ``keep32`` is the plan's FP32 set for the main graph; None for the body of a subgraph node
    that runs in FP16, where every node that can run in FP16 does and float body inputs and
    outputs become FLOAT16; ``outer`` then gives the versions of the enclosing-scope tensors the
    body reads. ``twin()`` returns the inferred copy of ``graph`` (same node order), for the
    types inside FP16 bodies.
    """
    main = keep32 is not None
    opsets, alloc = env.opsets, env.alloc
    slots = [fp16_slots(node, opsets, types) for node in graph.node]
    is_fp16 = [s.status == "fp16" and (not main or node.name not in keep32) for s, node in zip(slots, graph.node)]
    produced: dict[str, int] = {}  # new type of every FLOAT tensor an FP16 node turns into FLOAT16
    for node, slot, fp16 in zip(graph.node, slots, is_fp16):
        if fp16:
            produced.update({node.output[k]: FLOAT16 for k in slot.outputs})
    body_inputs16 = set() if main else {v.name for v in graph.input if types.is_float32(v.name)}
    for name in body_inputs16:
        produced[name] = FLOAT16
    local = _defined_in(graph)

    def native(name: str) -> int:
        if outer is not None and name not in local:
            return outer.native(name)
        return produced.get(name, types.elem.get(name, 0))

    graph_inputs = {v.name for v in graph.input}
    inits = {t.name: t for t in graph.initializer if t.name not in graph_inputs}

    # What every reader of a FLOAT tensor needs: (node index or None, input index or None, name, type).
    wants: list[tuple[int | None, int | None, str, int]] = []
    for i, (node, slot) in enumerate(zip(graph.node, slots)):
        for k, name in enumerate(node.input):
            if not name or not types.is_float32(name):
                continue
            if is_fp16[i] and k in slot.inputs:
                wants.append((i, k, name, FLOAT16))
            elif slot.status == "neutral":
                wants.append((i, k, name, FLOAT if name in inits else native(name)))
            else:
                wants.append((i, k, name, FLOAT))
        for name in outer_refs(node) if not is_fp16[i] else []:
            # An FP16 subgraph node's bodies ask for the versions they need when converted.
            if types.is_float32(name):
                wants.append((i, None, name, FLOAT))
    body_outputs16 = [] if main else [k for k, out in enumerate(graph.output) if types.is_float32(out.name)]
    for out in graph.output:
        if main and out.type.tensor_type.elem_type == FLOAT:
            wants.append((None, None, out.name, FLOAT))
    for k in body_outputs16:
        wants.append((None, None, graph.output[k].name, FLOAT16))

    versions: dict[str, dict[int, str]] = {}  # tensor -> {type: name of that version}
    originals = {name: _copy(inits[name]) for name in inits if inits[name].data_type == FLOAT}
    _convert_initializers(graph, inits, wants, versions, alloc)
    renamed_outputs: dict[str, str] = {}
    for out in graph.output if main else []:
        if out.type.tensor_type.elem_type == FLOAT and produced.get(out.name) == FLOAT16 and out.name not in renamed_outputs:
            renamed_outputs[out.name] = alloc.new(f"{out.name}__fp16")
            versions[out.name] = {FLOAT16: renamed_outputs[out.name], FLOAT: out.name}

    new_nodes: list[onnx.NodeProto] = []
    new_value_info: list[onnx.ValueInfoProto] = []

    def add_cast(source: str, target: str, to: int, name_of: str) -> None:
        new_nodes.append(helper.make_node("Cast", [source], [target], name=alloc.new(f"{name_of}__cast_to_{_SUFFIX[to]}"), to=to))
        known = types.value_info.get(name_of)
        if known is not None and known.type.tensor_type.HasField("shape"):
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(known)
            vi.name = target
            vi.type.tensor_type.elem_type = to
            new_value_info.append(vi)

    duplicated: set[str] = set()  # FLOAT initializers that a body asked for in FLOAT16

    def resolve(name: str, want: int) -> str:
        if outer is not None and name not in local:
            return outer.resolve(name, want)
        have = versions.setdefault(name, {native(name): name})
        if want not in have and name in originals:
            # A body reads a weight in a type nothing here asked for: store that version too.
            copy = to_fp16_tensor(originals[name]) if want == FLOAT16 else _copy(originals[name])
            copy.name = alloc.new(f"{name}__{_SUFFIX[want]}")
            graph.initializer.append(copy)
            have[want] = copy.name
            duplicated.add(name)
        if want not in have:
            source = have.get(FLOAT, next(iter(have.values())))
            target = alloc.new(f"{name}__to_{_SUFFIX[want]}")
            add_cast(source, target, want, name)
            have[want] = target
        return have[want]

    by_node: dict[int, list[tuple[int | None, str, int]]] = {}
    for i, k, name, want in wants:
        if i is not None:
            by_node.setdefault(i, []).append((k, name, want))
    for i, node in enumerate(graph.node):
        outer_map: dict[str, str] = {}
        for k, name, want in by_node.get(i, []):
            source = resolve(name, want)
            if k is None:
                if source != name:
                    outer_map[name] = source
            else:
                node.input[k] = source
        if is_fp16[i] and subgraphs(node):
            twin_graph = twin()
            twin_node = twin_graph.node[i] if len(twin_graph.node) == len(graph.node) else node
            _convert_bodies(node, twin_node, types, env, _Scope(resolve, native))
        for sub in subgraphs(node) if outer_map else []:
            rename_outer_refs(sub, outer_map)
        if is_fp16[i]:
            _switch_attributes(node, slots[i].outputs, types)
        renamed_here = [(k, o) for k, o in enumerate(node.output) if o in renamed_outputs]
        for k, o in renamed_here:
            node.output[k] = renamed_outputs[o]
        new_nodes.append(node)
        for _, o in renamed_here:
            add_cast(renamed_outputs[o], o, FLOAT, o)
            vi = types.value_info.get(o)
            if vi is not None:
                fp16_vi = onnx.ValueInfoProto()
                fp16_vi.CopyFrom(vi)
                fp16_vi.name = renamed_outputs[o]
                fp16_vi.type.tensor_type.elem_type = FLOAT16
                new_value_info.append(fp16_vi)
    # A body's float inputs and outputs are FLOAT16 (the node's border is FP16 on both sides).
    for value in graph.input:
        if value.name in body_inputs16:
            value.type.tensor_type.elem_type = FLOAT16
    for k in body_outputs16:
        out = graph.output[k]
        out.name = resolve(out.name, FLOAT16)
        out.type.tensor_type.elem_type = FLOAT16

    del graph.node[:]
    graph.node.extend(new_nodes)
    if duplicated:
        read = {o.name for o in graph.output} | {n for node in graph.node for n in list(node.input) + outer_refs(node)}
        unread = [t for t in graph.initializer if t.name in duplicated and t.name not in read]
        for tensor in unread:
            graph.initializer.remove(tensor)
    # Exporters (torch dynamo, onnxscript) declare value_info for weights too: a weight converted
    # in place must be declared with its new type, or the ONNX checker sees FLOAT16 data behind a
    # FLOAT declaration (issue 20).
    stored = {t.name: t.data_type for t in graph.initializer}
    for vi in graph.value_info:
        if vi.type.WhichOneof("value") != "tensor_type":
            continue
        if produced.get(vi.name) == FLOAT16 and vi.name not in renamed_outputs and vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = FLOAT16
        elif stored.get(vi.name) == FLOAT16 and vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = FLOAT16
    graph.value_info.extend(new_value_info)


def _convert_bodies(node: onnx.NodeProto, twin_node: onnx.NodeProto, outer: TypeInfo, env: _Env, scope: _Scope) -> None:
    """Convert the bodies of FP16 subgraph node ``node`` (its twin in the inferred copy gives the
    bodies' types): every body runs in FP16 where it can, reading enclosing tensors through
    ``scope``."""
    twins = {a.name: a for a in twin_node.attribute}
    for attr in node.attribute:
        twin = twins.get(attr.name)
        if attr.type == AttributeProto.GRAPH:
            pairs = [(attr.g, twin.g if twin is not None and twin.type == AttributeProto.GRAPH else attr.g)]
        elif attr.type == AttributeProto.GRAPHS:
            twin_graphs = list(twin.graphs) if twin is not None and len(twin.graphs) == len(attr.graphs) else list(attr.graphs)
            pairs = list(zip(attr.graphs, twin_graphs))
        else:
            continue
        for sub, sub_twin in pairs:
            if len(sub_twin.node) != len(sub.node):
                sub_twin = sub
            body = _body_types(node, sub, sub_twin, outer, env.opsets)
            _convert_graph(sub, body, env, None, lambda t=sub_twin: t, scope)


def _copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _convert_initializers(graph, inits, wants, versions, alloc) -> None:
    """Give FP16 readers of FLOAT initializers an FP16 copy (in place, or a ``__fp16`` duplicate)."""
    need16 = {name for _, _, name, want in wants if name in inits and want == FLOAT16}
    need32 = {name for _, _, name, want in wants if name in inits and want == FLOAT}
    for name in sorted(need16):
        tensor = inits[name]
        if name in need32:
            dup = alloc.new(f"{name}__fp16")
            graph.initializer.append(to_fp16_tensor(tensor, dup))
            versions[name] = {FLOAT: name, FLOAT16: dup}
        else:
            tensor.CopyFrom(to_fp16_tensor(tensor))
            versions[name] = {FLOAT16: name}


def _switch_attributes(node: onnx.NodeProto, converted_outputs: frozenset[int], types) -> None:
    """Make an FP16 node's type-defining attributes produce FLOAT16 where its output turned FP16."""
    if not converted_outputs:
        return
    op = node.op_type
    if op == "Cast":
        for attr in node.attribute:
            if attr.name == "to" and attr.i == FLOAT:
                attr.i = FLOAT16
        return
    if op == "Constant":
        for attr in list(node.attribute):
            if attr.name == "value" and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(to_fp16_tensor(attr.t))
            elif attr.name in ("value_float", "value_floats"):
                array = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
                node.attribute.remove(attr)
                with np.errstate(over="ignore"):
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(array.astype(np.float16))))
        return
    if op == "ConstantOfShape":
        for attr in node.attribute:
            if attr.name == "value":
                if attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(to_fp16_tensor(attr.t))
                return
        # Absent value means float32 zero: spell out a float16 zero instead.
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
        return
    has_dtype = False
    for attr in node.attribute:
        if attr.name == "dtype" and attr.type == AttributeProto.INT:
            has_dtype = True
            if attr.i == FLOAT:
                attr.i = FLOAT16
    if not has_dtype and op in _DTYPE_DEFAULTS_FLOAT:
        node.attribute.append(helper.make_attribute("dtype", FLOAT16))
