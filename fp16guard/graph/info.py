"""Graph facts shared by the plan, the conversion and the emulation passes.

Nothing here edits a model. The functions answer three questions about the main graph:

* what element type every tensor has (:func:`tensor_types`, from ONNX type inference on a copy
  whose large weights are replaced by typed graph inputs, so models above 2 GB or with unloaded
  external data can be analysed);
* which tensors a node reads from an enclosing scope through its subgraphs (:func:`outer_refs`);
* whether a node can run in FP16 at all, and which of its FLOAT inputs and outputs become FLOAT16
  when it does (:func:`fp16_slots`), from the op schema's type constraints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, TensorProto, helper

#: Ops that read only the shape of their input, never its values: they take whatever precision
#: their producer gives them and are never a reason to cast (``neutral`` in the plan).
VALUE_AGNOSTIC_OPS = frozenset({"Shape", "Size"})

#: Domains whose schemas onnx knows as the standard operator set.
DEFAULT_DOMAINS = ("", "ai.onnx")

#: Initializers at most this many bytes stay initializers in the copy used for type inference
#: (shape tensors must stay constant for inference to be precise); larger ones become inputs.
_KEEP_INIT_BYTES = 4096

_FP16 = "tensor(float16)"


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs held by ``node``'s attributes (If branches, Loop/Scan bodies), in order."""
    out: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def _defined_in(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
    return names


def _graph_outer_refs(graph: onnx.GraphProto, outer_defined: set[str], acc: list[str], seen: set[str]) -> None:
    local = _defined_in(graph) | outer_defined
    for node in graph.node:
        for name in node.input:
            if name and name not in local and name not in seen:
                seen.add(name)
                acc.append(name)
        for sub in subgraphs(node):
            _graph_outer_refs(sub, local, acc, seen)
    for out in graph.output:
        if out.name not in local and out.name not in seen:
            seen.add(out.name)
            acc.append(out.name)


def outer_refs(node: onnx.NodeProto) -> list[str]:
    """Names that ``node``'s subgraphs (at any depth) read from the scope around ``node``.

    These act as implicit inputs of the node. Order: first reference first; no duplicates.
    """
    acc: list[str] = []
    seen: set[str] = set()
    for sub in subgraphs(node):
        _graph_outer_refs(sub, set(), acc, seen)
    return acc


def rename_outer_refs(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename references to enclosing-scope tensors inside ``graph`` (and deeper), in place.

    A name defined inside a (sub)graph shadows the enclosing one and is left alone there.
    """
    live = {k: v for k, v in mapping.items() if k not in _defined_in(graph)}
    if not live:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in live:
                node.input[i] = live[name]
        for sub in subgraphs(node):
            rename_outer_refs(sub, live)
    for out in graph.output:
        if out.name in live:
            out.name = live[out.name]


def opset_map(model: onnx.ModelProto) -> dict[str, int]:
    """``{domain: version}`` of the model's opset imports (``'ai.onnx'`` folded into ``''``)."""
    return {("" if imp.domain == "ai.onnx" else imp.domain): imp.version for imp in model.opset_import}


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for type inference: large (or external) initializers become typed graph inputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model) if model.ByteSize() < 2**30 else _copy_without_weights(model, copy)
    graph = copy.graph
    inputs = {v.name for v in graph.input}
    keep = []
    for tensor in graph.initializer:
        small = tensor.data_location != TensorProto.EXTERNAL and tensor.ByteSize() <= _KEEP_INIT_BYTES
        if small:
            keep.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return copy


def _copy_without_weights(model: onnx.ModelProto, copy: onnx.ModelProto) -> None:
    # Copy everything but the initializer payloads, which could exceed protobuf's 2 GB limit.
    graph = model.graph
    saved = list(graph.initializer)
    stub = []
    for tensor in saved:
        t = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        t.data_location = TensorProto.EXTERNAL  # forces _skeleton to turn it into an input
        stub.append(t)
    shell = onnx.ModelProto()
    shell.ir_version = model.ir_version
    shell.opset_import.extend(model.opset_import)
    shell.graph.name = graph.name
    shell.graph.node.extend(graph.node)
    shell.graph.input.extend(graph.input)
    shell.graph.output.extend(graph.output)
    shell.graph.value_info.extend(graph.value_info)
    shell.graph.initializer.extend(stub)
    shell.functions.extend(model.functions)
    copy.CopyFrom(shell)


@dataclass
class TypeInfo:
    """Element types of the main graph's values.

    Attributes:
        elem: tensor name -> ONNX element type (``TensorProto.FLOAT`` ...), for every tensor whose
            type is known (graph inputs, initializers, node outputs, graph outputs).
        non_tensor: names of values that are sequences, maps or optionals.
        value_info: tensor name -> inferred ``ValueInfoProto`` (shape and type), where known.
    """

    elem: dict[str, int] = field(default_factory=dict)
    non_tensor: set[str] = field(default_factory=set)
    value_info: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)

    def is_float32(self, name: str) -> bool:
        return self.elem.get(name) == TensorProto.FLOAT


def inferred_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weight-light copy of ``model`` annotated by ONNX type inference (best effort).

    Its nodes and subgraphs are in the same order as ``model``'s, so they can be walked in
    parallel; large initializers are graph inputs in the copy.
    """
    skeleton = _skeleton(model)
    try:
        return onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False)
    except Exception:  # inference is best effort; declared types still apply
        return skeleton


def graph_elem_types(graph: onnx.GraphProto, inferred: onnx.GraphProto | None = None, opsets: dict[str, int] | None = None) -> dict[str, int]:
    """Element types of the tensors of one (sub)graph: ``inferred``'s annotations, then
    declarations, then (with ``opsets``) :func:`propagate_by_schema` for what both left untyped."""
    elem: dict[str, int] = {}
    sources = [] if inferred is None else [inferred]
    non_tensor: set[str] = set()
    for g in sources + [graph]:
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            which = vi.type.WhichOneof("value")
            if which == "tensor_type" and vi.type.tensor_type.elem_type:
                elem[vi.name] = vi.type.tensor_type.elem_type
            elif which is not None and which != "tensor_type":
                non_tensor.add(vi.name)
    for tensor in graph.initializer:
        elem[tensor.name] = tensor.data_type
    if opsets is not None:
        propagate_by_schema(graph, elem, non_tensor, opsets)
    return elem


#: Literal tensor types of op schemas (``tensor(float)``) and their element types.
_LITERAL_TYPES = {
    "tensor(float)": TensorProto.FLOAT,
    "tensor(float16)": TensorProto.FLOAT16,
    "tensor(bfloat16)": TensorProto.BFLOAT16,
    "tensor(double)": TensorProto.DOUBLE,
    "tensor(int64)": TensorProto.INT64,
    "tensor(int32)": TensorProto.INT32,
    "tensor(bool)": TensorProto.BOOL,
}


def propagate_by_schema(graph: onnx.GraphProto, elem: dict[str, int], non_tensor: set[str], opsets: dict[str, int]) -> None:
    """Type, in graph order, the outputs of default-domain nodes that ONNX inference left untyped,
    from the op schema alone: an output bound to the same type variable as a typed input has
    that input's type; a literal (``tensor(float)``) or single-type output has that type.

    Why: onnx runs no inference for some function ops (GroupNormalization-21 is one), and one
    untyped output would leave every node after it ``unknown_type`` (kept FP32) and its tensors
    unmeasured. Edits ``elem`` in place; never overrides a known type.
    """
    for node in graph.node:
        outs = [(k, o) for k, o in enumerate(node.output) if o and o not in elem and o not in non_tensor]
        domain = "" if node.domain == "ai.onnx" else node.domain
        if not outs or domain not in DEFAULT_DOMAINS:
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        except onnx.defs.SchemaError:
            continue
        allowed = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}
        bound: dict[str, int] = {}
        for k, name in enumerate(node.input):
            formal = _formal(schema.inputs, k)
            if name and formal is not None and name in elem:
                bound.setdefault(formal.type_str, elem[name])
        for k, name in outs:
            formal = _formal(schema.outputs, k)
            if formal is None:
                continue
            choices = allowed.get(formal.type_str, [formal.type_str])
            if formal.type_str in bound:
                elem[name] = bound[formal.type_str]
            elif len(choices) == 1 and choices[0] in _LITERAL_TYPES:
                elem[name] = _LITERAL_TYPES[choices[0]]


def tensor_types(model: onnx.ModelProto) -> TypeInfo:
    """Infer the element type of every main-graph value (never raises on inference gaps).

    Declared types (graph inputs/outputs, ``value_info``, initializers) are taken first; ONNX
    type inference fills in the rest, then the op schemas (:func:`propagate_by_schema`) what
    inference left untyped. A value nothing can type (e.g. the output of an op in a custom
    domain) is simply absent from :attr:`TypeInfo.elem`.
    """
    inferred = inferred_skeleton(model)
    info = TypeInfo()
    graph = inferred.graph
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        _record(info, vi)
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        _record(info, vi)  # declarations win over inference
    for tensor in model.graph.initializer:
        info.elem[tensor.name] = tensor.data_type
    for sparse in model.graph.sparse_initializer:
        info.elem[sparse.values.name] = sparse.values.data_type
    propagate_by_schema(model.graph, info.elem, info.non_tensor, opset_map(model))
    return info


def _record(info: TypeInfo, vi: onnx.ValueInfoProto) -> None:
    which = vi.type.WhichOneof("value")
    if which == "tensor_type":
        if vi.type.tensor_type.elem_type:
            info.elem[vi.name] = vi.type.tensor_type.elem_type
            info.value_info[vi.name] = vi
    elif which is not None:
        info.non_tensor.add(vi.name)


@dataclass(frozen=True)
class Fp16Slots:
    """How a node would run in FP16.

    Attributes:
        status: ``"fp16"`` (can run in FP16), ``"no_float"`` (touches no FLOAT tensor: precision
            does not apply), ``"neutral"`` (reads only the shape of its float input), or a rule
            code saying why it must stay FP32: ``has_subgraph``, ``custom_domain``,
            ``unknown_type``, ``no_fp16_kernel``.
        inputs: indices of FLOAT inputs that become FLOAT16 when the node runs in FP16.
        outputs: indices of FLOAT outputs that become FLOAT16 when the node runs in FP16.
        detail: a sentence explaining an FP32 status ('' otherwise).
    """

    status: str
    inputs: frozenset[int] = frozenset()
    outputs: frozenset[int] = frozenset()
    detail: str = ""


def _formal(params, index: int):
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def fp16_slots(node: onnx.NodeProto, opsets: dict[str, int], types: TypeInfo) -> Fp16Slots:
    """Decide whether ``node`` can run in FP16 and which FLOAT slots then become FLOAT16.

    Rules, in order (the first that applies decides):

    1. Subgraph nodes (If/Loop/Scan, default domain) run in FP16 as a whole: ``fp16`` when they
       touch a FLOAT tensor (at their border or captured from the enclosing scope), with every
       FLOAT input and output as a slot (their type constraints allow float16; the bodies are
       converted with them, :func:`fp16guard.graph.convert.to_mixed_precision`);
       ``unknown_type`` when a border value or a body input/output is not a typed tensor;
       ``no_float`` when no FLOAT tensor is in sight. The plan keeps them FP32 by default
       (:mod:`fp16guard.plan.rules.structural`, ``has_subgraph``) because their bodies are not
       measured; a passing calibration check overrules that (:mod:`fp16guard.plan.repair`).
       A subgraph node outside the default domain is ``has_subgraph``.
    2. ``custom_domain``: nodes outside the default ONNX domain stay FP32 (no schema to say
       whether float16 is allowed; ``ai.onnx.ml`` included).
    3. ``unknown_type``: a node touching a value whose tensor type is unknown (sequence, map,
       optional, or an untyped output of a custom op) stays FP32: a cast cannot be placed safely.
    4. ``no_float``: no FLOAT input or output: precision does not apply.
    5. ``neutral``: Shape and Size read only the shape: they follow their producer.
    6. ``no_fp16_kernel``: the op has no schema at the model's opset, a FLOAT input/output is
       bound to a type constraint that excludes ``tensor(float16)``, or no FLOAT slot can be
       float16 at all. FLOAT slots with a literal type (``scales`` of Resize is
       ``tensor(float)``) stay FLOAT without blocking the node.
    """
    domain = "" if node.domain == "ai.onnx" else node.domain
    if subgraphs(node) and domain in DEFAULT_DOMAINS:
        return _subgraph_slots(node, types)
    if subgraphs(node):
        return Fp16Slots("has_subgraph", detail=f"{node.op_type} holds subgraphs, which are not instrumented")
    if domain not in DEFAULT_DOMAINS:
        return Fp16Slots("custom_domain", detail=f"op {node.op_type} is in domain '{node.domain}', not the default ONNX domain")
    names = [n for n in list(node.input) + list(node.output) if n]
    unknown = [n for n in names if n in types.non_tensor or n not in types.elem]
    if unknown:
        return Fp16Slots("unknown_type", detail=f"the tensor type of {unknown[0]!r} is unknown (sequence, optional or untyped)")
    if not any(types.is_float32(n) for n in names):
        return Fp16Slots("no_float")
    if node.op_type in VALUE_AGNOSTIC_OPS:
        return Fp16Slots("neutral")
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
    except onnx.defs.SchemaError:
        return Fp16Slots("no_fp16_kernel", detail=f"op {node.op_type} has no schema at opset {opsets.get(domain, 1)}")
    constraints = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    picked: dict[str, set[int]] = {"in": set(), "out": set()}
    for side, names_, params in (("in", node.input, schema.inputs), ("out", node.output, schema.outputs)):
        for index, name in enumerate(names_):
            if not name or not types.is_float32(name):
                continue
            formal = _formal(params, index)
            if formal is None:
                return Fp16Slots("no_fp16_kernel", detail=f"{node.op_type} has no formal parameter for slot {index}")
            allowed = constraints.get(formal.type_str)
            if allowed is None:
                continue  # literal type such as tensor(float): stays FLOAT
            if _FP16 not in allowed:
                return Fp16Slots(
                    "no_fp16_kernel",
                    detail=f"{node.op_type}-{schema.since_version} does not allow float16 for {formal.name!r} ({name!r})",
                )
            picked[side].add(index)
    if not picked["in"] and not picked["out"]:
        return Fp16Slots("no_fp16_kernel", detail=f"no float input or output of {node.op_type} can be float16")
    return Fp16Slots("fp16", frozenset(picked["in"]), frozenset(picked["out"]))


def body_border(node: onnx.NodeProto, sub: onnx.GraphProto) -> dict[str, str]:
    """Body input/output name -> the name of the node's input/output it is bound to (same type):
    If outputs; Loop carried inputs (from the third) and outputs (from the second); Scan inputs
    and outputs one to one (opset 9+, where their counts match)."""
    op, border = node.op_type, {}
    if op == "If":
        border.update({v.name: o for v, o in zip(sub.output, node.output) if o})
    elif op == "Loop":
        border.update({v.name: i for v, i in list(zip(sub.input, node.input))[2:] if i})
        border.update({v.name: o for v, o in zip(list(sub.output)[1:], node.output) if o})
    elif op == "Scan":
        if len(sub.input) == len(node.input):
            border.update({v.name: i for v, i in zip(sub.input, node.input) if i})
        if len(sub.output) == len(node.output):
            border.update({v.name: o for v, o in zip(sub.output, node.output) if o})
    return border


def _subgraph_slots(node: onnx.NodeProto, types: TypeInfo) -> Fp16Slots:
    """:func:`fp16_slots` of a default-domain node holding subgraphs (see rule 1 there)."""
    names = [n for n in list(node.input) + list(node.output) if n]
    unknown = [n for n in names if n in types.non_tensor or n not in types.elem]
    if unknown:
        return Fp16Slots("unknown_type", detail=f"the tensor type of {unknown[0]!r} is unknown (sequence, optional or untyped)")
    for sub in subgraphs(node):
        border = body_border(node, sub)
        for value in list(sub.input) + list(sub.output):
            which = value.type.WhichOneof("value")
            if which == "tensor_type" and value.type.tensor_type.elem_type:
                continue
            # Exporters leave body outputs untyped (torch's If bodies): the node's matching
            # input or output gives the type.
            if which in (None, "tensor_type") and border.get(value.name) in types.elem:
                continue
            return Fp16Slots("unknown_type", detail=f"{node.op_type} body {sub.name!r} declares {value.name!r} without a tensor element type")
    if not any(types.is_float32(n) for n in names + outer_refs(node)):
        return Fp16Slots("no_float")
    inputs = frozenset(k for k, n in enumerate(node.input) if n and types.is_float32(n))
    outputs = frozenset(k for k, n in enumerate(node.output) if n and types.is_float32(n))
    return Fp16Slots("fp16", inputs, outputs)


class NameAllocator:
    """Deterministic, collision-free names: ``base``, else ``base_2``, ``base_3``..."""

    def __init__(self, taken: set[str]):
        self.taken = set(taken)

    def new(self, base: str) -> str:
        name, k = base, 2
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every value and node name used anywhere in the model (subgraphs included)."""
    names: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        names.update(v.name for v in graph.input)
        names.update(v.name for v in graph.output)
        names.update(v.name for v in graph.value_info)
        names.update(t.name for t in graph.initializer)
        for node in graph.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
            for sub in subgraphs(node):
                walk(sub)

    walk(model.graph)
    names.discard("")
    return names
