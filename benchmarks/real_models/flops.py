"""How much of a model's arithmetic an artifact runs in FP16, measured from the artifact itself.

The benchmark's own count, independent of the planner: FLOPs of the compute nodes (Conv,
ConvTranspose, Gemm, MatMul, their integer forms, LSTM/GRU/RNN and the quantised LSTM) from
the tensor shapes of one real input, and for each compute node whether the *artifact* runs it
in FP16 (its first float input is FLOAT16 there). Nodes inside ``If``/``Loop``/``Scan`` bodies
count too (shapes from ONNX inference with the input shapes fixed) and are attributed to the
top-level node that holds them.

When ``fp16guard.plan.cost`` exists (``node_costs`` / ``fp16_share``), :func:`tool_share`
gives its figure as well, so the two counts can be compared.

Shapes of main-graph tensors come from one onnxruntime run of the FP32 model with the compute
nodes' inputs and outputs added as graph outputs (exact, whatever the dynamic axes); inside
subgraphs from ONNX shape inference with the graph inputs' shapes fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto

__all__ = ["COMPUTE_OPS", "Share", "artifact_share", "node_flops", "tool_share"]

COMPUTE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
    "LSTM", "GRU", "RNN", "DynamicQuantizeLSTM", "Attention", "MultiHeadAttention", "Einsum",
})
_INTEGER_OPS = frozenset({"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM"})


@dataclass
class Share:
    """FP16 share of an artifact's compute."""

    flops_total: float = 0.0
    flops_fp16: float = 0.0
    compute_nodes: int = 0
    compute_nodes_fp16: int = 0
    unknown_shape_nodes: list[str] = field(default_factory=list)
    by_holder: dict[str, float] = field(default_factory=dict)  # top-level node -> FLOPs (itself and its subgraphs)

    @property
    def share_flops(self) -> float | None:
        return self.flops_fp16 / self.flops_total if self.flops_total > 0 else None

    @property
    def share_nodes(self) -> float | None:
        return self.compute_nodes_fp16 / self.compute_nodes if self.compute_nodes else None

    def to_dict(self) -> dict:
        return {
            "flops_total": self.flops_total, "flops_fp16": self.flops_fp16, "share_flops": self.share_flops,
            "compute_nodes": self.compute_nodes, "compute_nodes_fp16": self.compute_nodes_fp16, "share_nodes": self.share_nodes,
            "unknown_shape_nodes": self.unknown_shape_nodes[:20], "unknown_shape_count": len(self.unknown_shape_nodes),
        }


def _dims(shape) -> list[int] | None:
    if shape is None:
        return None
    out = []
    for d in shape:
        if isinstance(d, (int, np.integer)) and d >= 0:
            out.append(int(d))
        else:
            return None
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(node: onnx.NodeProto, shapes: Mapping[str, list[int] | None]) -> float | None:
    """Multiply-adds × 2 of one compute node from its tensors' shapes (None: a shape unknown)."""
    op = node.op_type
    get = lambda i: _dims(shapes.get(node.input[i])) if len(node.input) > i and node.input[i] else None  # noqa: E731
    out = _dims(shapes.get(node.output[0])) if node.output and node.output[0] else None
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = get(3 if op == "QLinearConv" else 1)
        if w is None or out is None or len(w) < 2:
            return None
        return 2.0 * math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = get(0), get(1)
        if x is None or w is None:
            return None
        return 2.0 * math.prod(x) * math.prod(w[1:])
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
        a = get(0)
        if a is None or out is None:
            return None
        k = a[0] if op == "Gemm" and _attr(node, "transA", 0) else a[-1]
        return 2.0 * math.prod(out) * k
    if op in ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"):
        x, w = get(0), get(1)
        if x is None or w is None or len(x) < 3 or len(w) < 3:
            return None
        dirs, gates_hidden, inp = w[0], w[1], w[2]
        hidden = int(_attr(node, "hidden_size", 0) or 0) or gates_hidden // {"LSTM": 4, "DynamicQuantizeLSTM": 4, "GRU": 3}.get(op, 1)
        if op == "DynamicQuantizeLSTM":  # weights stored [dirs, input, 4*hidden]
            inp, gates_hidden = w[1], w[2]
        seq, batch = (x[0], x[1]) if not _attr(node, "layout", 0) else (x[1], x[0])
        return 2.0 * seq * batch * dirs * gates_hidden * (inp + hidden)
    if op == "Einsum":
        return None
    return None


def _fixed(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in feeds and vi.type.WhichOneof("value") == "tensor_type":
            arr = np.asarray(feeds[vi.name])
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in arr.shape:
                dims.add().dim_value = int(d)
    return m


def _inferred_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, list[int] | None], dict[str, int]]:
    """Shapes and element types of every value, subgraphs included, by ONNX inference."""
    from fp16guard.graph.info import inferred_skeleton, subgraphs

    inferred = inferred_skeleton(_fixed(model, feeds))
    shapes: dict[str, list[int] | None] = {}
    types: dict[str, int] = {}

    def walk(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.WhichOneof("value") != "tensor_type":
                continue
            tt = vi.type.tensor_type
            if tt.elem_type:
                types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        walk_inits(g, values=True)  # its initializers, then its subgraphs through walk

    # initializers of the real model too (the skeleton may have turned large ones into inputs)
    def walk_inits(g: onnx.GraphProto, values: bool = False) -> None:
        for init in g.initializer:
            shapes[init.name] = list(init.dims)
            types[init.name] = init.data_type
        for n in g.node:
            for sub in subgraphs(n):
                (walk if values else walk_inits)(sub)

    walk(inferred.graph)
    walk_inits(model.graph)
    return shapes, types


def _runtime_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], names: set[str]) -> dict[str, list[int]]:
    """Exact shapes of main-graph tensors ``names`` from one onnxruntime run of the FP32 model."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    produced = {o for n in m.graph.node for o in n.output if o}
    have = {o.name for o in m.graph.output}
    extra = sorted(n for n in names if n in produced and n not in have)
    for name in extra:
        m.graph.output.add().name = name
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return {}
    wanted = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}
    values = sess.run(wanted, {k: v for k, v in feeds.items() if k in inputs})
    return {n: list(np.asarray(v).shape) for n, v in zip(wanted, values) if isinstance(v, np.ndarray)}


def _profiled_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, dict[str, list[int]]]:
    """Per node name (subgraph nodes included): its tensors' shapes as onnxruntime ran them, from
    one profiled run of the FP32 model with graph optimisations off (so node names stay)."""
    import json
    import os
    import tempfile

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "shapes")
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            inputs = {i.name for i in sess.get_inputs()}
            sess.run(None, {k: v for k, v in feeds.items() if k in inputs})
            path = sess.end_profiling()
            events = json.loads(open(path).read())
        except Exception:
            return {}
    nodes: dict[str, onnx.NodeProto] = {}

    def collect(g: onnx.GraphProto) -> None:
        for n in g.node:
            nodes.setdefault(n.name, n)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        collect(sub)

    collect(model.graph)
    out: dict[str, dict[str, list[int]]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        node = nodes.get(name)
        args = e.get("args") or {}
        if node is None or name in out:
            continue
        shapes: dict[str, list[int]] = {}
        for names, given in ((node.input, args.get("input_type_shape") or []), (node.output, args.get("output_type_shape") or [])):
            present = [t for t in names if t]
            for t, entry in zip(present, given):
                if isinstance(entry, dict) and entry:
                    shapes[t] = list(next(iter(entry.values())))
        out[name] = shapes
    return out


def _compute_nodes(graph: onnx.GraphProto, holder: str | None = None):
    for n in graph.node:
        top = holder or n.name
        if n.op_type in COMPUTE_OPS:
            yield n, top
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _compute_nodes(a.g, top)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _compute_nodes(sub, top)


def artifact_share(fp32_model: onnx.ModelProto, artifact: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Share:
    """FLOPs of ``fp32_model``'s compute nodes on ``feeds`` and the share ``artifact`` runs in FP16.

    A compute node counts as FP16 when, in the artifact, its first input is FLOAT16 (integer ops
    never are). Nodes are matched by name (the converter keeps names).
    """
    shapes, _ = _inferred_shapes(fp32_model, feeds)
    main_names = set()
    for n in fp32_model.graph.node:
        if n.op_type in COMPUTE_OPS:
            main_names.update(x for x in list(n.input) + list(n.output) if x)
    shapes.update(_runtime_shapes(fp32_model, feeds, main_names))
    per_node = _profiled_shapes(fp32_model, feeds)
    _, art_types = _inferred_shapes(artifact, feeds)
    art_nodes = {n.name: n for n, _ in _compute_nodes(artifact.graph)}
    share = Share()
    for node, top in _compute_nodes(fp32_model.graph):
        flops = node_flops(node, {**shapes, **per_node.get(node.name, {})})
        share.compute_nodes += 1
        if flops is None:
            share.unknown_shape_nodes.append(node.name or node.output[0])
            flops = 0.0
        share.flops_total += flops
        share.by_holder[top] = share.by_holder.get(top, 0.0) + flops
        other = art_nodes.get(node.name)
        if other is None or node.op_type in _INTEGER_OPS:
            continue
        first = next((i for i in other.input if i), None)
        if first is not None and art_types.get(first) == TensorProto.FLOAT16:
            share.flops_fp16 += flops
            share.compute_nodes_fp16 += 1
    return share


def tool_share(model: onnx.ModelProto, fp32_nodes: set[str], feeds: Mapping[str, np.ndarray]) -> dict | None:
    """``fp16guard.plan.cost.fp16_share`` when that module exists (None otherwise, or on error)."""
    try:
        from fp16guard.plan import cost  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        shapes = {k: tuple(np.asarray(v).shape) for k, v in feeds.items()}
        costs = cost.node_costs(model, input_shapes=shapes)
        share = cost.fp16_share(costs, fp32_nodes)
        out = share.to_dict() if hasattr(share, "to_dict") else {"share_flops": getattr(share, "share_flops", None)}
        return out
    except Exception as exc:  # the helper's module is new: never let it break the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"}
