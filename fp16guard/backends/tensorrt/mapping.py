"""Which TensorRT layers come from which ONNX nodes (docs/FACTS.md #9).

TensorRT names layers after ONNX nodes, but the match is loose: one node may become several
layers (helper constants, shuffles, the main op), fused layers get combined names
(``a + b``, ``PWN(a, b)``, ``{ForeignNode[first...last]}``), and output 0 is not the only output
that matters (Split, TopK, LSTM). So a layer is attributed to nodes by, in order of trust:

1. ``metadata`` — the ONNX parser of TensorRT 10+ tags every layer it creates for a node with
   ``[ONNX Layer: <node>]``; fused layers join several tags with ``\\x1f`` / ``\\x1e``.
2. its name — the node's own name, or the node names inside a fused name.
3. its output tensors — any output tensor named like an output of a node.
4. a weight — a layer whose output is named like an initializer a node reads (the parser's
   constant layers), attributed to every node that reads it.
5. helpers — a still unattributed layer whose outputs are read only by layers of one node
   (the reshapes and constants a node's import adds before its main layer).

Reformatting layers (TensorRT's own format and precision conversions) belong to no node.

The same rules serve the network before the build (which layers to pin in FP32) and the engine
after it (which engine layers must run in FP32). Pure Python over plain descriptions, so it is
tested without TensorRT; :func:`describe_network` turns a real ``INetworkDefinition`` into them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

_TAG = re.compile(r"^\s*\[ONNX Layer:\s*(.*)\]\s*$", re.S)
_SEPARATORS = re.compile(r"[\x1e\x1f]")
_FOREIGN = re.compile(r"^\{?ForeignNode\[(.*)\]\}?$", re.S)
_WRAPPER = re.compile(r"^[A-Za-z_]+\((.*)\)$", re.S)


@dataclass(frozen=True)
class NodeDesc:
    """One ONNX node of the main graph.

    Attributes:
        name: node name (normalised by :func:`fp16guard.io.model.load_model`).
        op_type: ONNX op type.
        inputs: input tensor names ('' for omitted optional inputs).
        outputs: output tensor names, every index.
        order: position in the graph (topological in a valid model).
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    order: int


@dataclass(frozen=True)
class LayerDesc:
    """One TensorRT layer as the API or the engine inspector shows it.

    Attributes:
        index: position in the network or engine.
        name: ``ILayer.name`` or the inspector's ``Name``.
        layer_type: ``ILayer.type`` name or the inspector's ``LayerType`` (informational).
        metadata: ``ILayer.metadata`` or the inspector's ``Metadata`` ('' when absent: TensorRT < 10).
        inputs: input tensor names.
        outputs: output tensor names, every index.
    """

    index: int
    name: str
    layer_type: str = ""
    metadata: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass
class LayerMapping:
    """Result of :func:`map_layers`.

    Attributes:
        layer_nodes: layer index -> names of the ONNX nodes it comes from (absent: unattributed).
        evidence: layer index -> the rule that attributed it ("metadata", "name", "output",
            "weight", "helper").
    """

    layer_nodes: dict[int, frozenset[str]] = field(default_factory=dict)
    evidence: dict[int, str] = field(default_factory=dict)

    def layers_of(self, node: str) -> list[int]:
        """Indices of the layers attributed to ``node``, ascending."""
        return sorted(i for i, nodes in self.layer_nodes.items() if node in nodes)

    def node_layers(self) -> dict[str, list[int]]:
        """node -> layer indices, for every node that has at least one layer."""
        out: dict[str, list[int]] = {}
        for index in sorted(self.layer_nodes):
            for node in sorted(self.layer_nodes[index]):
                out.setdefault(node, []).append(index)
        return out


def node_table(model) -> dict[str, NodeDesc]:
    """Describe the main-graph nodes of an ONNX ``ModelProto`` (names must be unique: load it
    with :func:`fp16guard.io.model.load_model`)."""
    return {
        node.name: NodeDesc(node.name, node.op_type, tuple(node.input), tuple(node.output), order)
        for order, node in enumerate(model.graph.node)
    }


def metadata_nodes(metadata: str) -> list[str]:
    """Node names tagged in a layer's metadata: ``"[ONNX Layer: a]\\x1f[ONNX Layer: b]"`` -> ``["a", "b"]``."""
    names = []
    for part in _SEPARATORS.split(metadata or ""):
        match = _TAG.match(part)
        if match and match.group(1):
            names.append(match.group(1))
    return names


def name_candidates(name: str, nodes: Mapping[str, NodeDesc]) -> list[str]:
    """Node names a layer name refers to: itself, the parts of a fused name, or a Myelin range.

    ``"a + b"`` -> a, b; ``"PWN(PWN(a, b), c)"`` -> a, b, c; ``"{ForeignNode[a...d]}"`` -> every
    node from a to d in graph order. Reformatting layers refer to no node. Only names present in
    ``nodes`` are returned, in first-seen order.
    """
    if not name or name.startswith("Reformatting CopyNode"):
        return []
    if name in nodes:
        return [name]
    found: list[str] = []

    def add(token: str) -> None:
        token = token.strip()
        if not token:
            return
        if token in nodes:
            if token not in found:
                found.append(token)
            return
        foreign = _FOREIGN.match(token)
        if foreign:
            first, sep, last = foreign.group(1).partition("...")
            if sep and first in nodes and last in nodes:
                lo, hi = sorted((nodes[first].order, nodes[last].order))
                for n in sorted(nodes.values(), key=lambda d: d.order):
                    if lo <= n.order <= hi and n.name not in found:
                        found.append(n.name)
            else:
                add(first)
                add(last)
            return
        wrapped = _WRAPPER.match(token)
        if wrapped:
            for piece in _split_top(wrapped.group(1)):
                add(piece)

    for part in name.split(" + "):
        add(part)
    return found


def map_layers(layers: Sequence[LayerDesc], nodes: Mapping[str, NodeDesc], initializers: Iterable[str] = ()) -> LayerMapping:
    """Attribute each layer to the ONNX nodes it comes from (rules in the module docstring).

    Args:
        layers: the network's or engine's layers.
        nodes: :func:`node_table` of the model the network was parsed from.
        initializers: names of the model's initializers (for rule 4).
    """
    producer = {out: n.name for n in nodes.values() for out in n.outputs if out}
    readers: dict[str, set[str]] = {}
    for n in nodes.values():
        for inp in n.inputs:
            if inp:
                readers.setdefault(inp, set()).add(n.name)
    inits = set(initializers)
    result = LayerMapping()
    for layer in layers:
        if is_reformat(layer):
            continue
        tagged = [n for n in metadata_nodes(layer.metadata) if n in nodes]
        if tagged:
            result.layer_nodes[layer.index] = frozenset(tagged)
            result.evidence[layer.index] = "metadata"
            continue
        named = name_candidates(layer.name, nodes)
        by_output = [producer[o] for o in layer.outputs if o in producer]
        if named or by_output:
            result.layer_nodes[layer.index] = frozenset(named) | frozenset(by_output)
            result.evidence[layer.index] = "name" if named else "output"
            continue
        weights = [o for o in layer.outputs if o in inits and o in readers]
        if weights:
            result.layer_nodes[layer.index] = frozenset().union(*(readers[w] for w in weights))
            result.evidence[layer.index] = "weight"
    _fill_helpers(layers, result)
    return result


def is_reformat(layer: LayerDesc) -> bool:
    """True for the format/precision conversions TensorRT inserts between layers: they belong
    to no ONNX node, and converting FP16 to FP32 in front of a pinned layer is their job."""
    return layer.name.startswith("Reformatting CopyNode") or layer.layer_type.lower() == "reformat"


def _fill_helpers(layers: Sequence[LayerDesc], result: LayerMapping) -> None:
    consumers: dict[str, list[int]] = {}
    for layer in layers:
        for inp in layer.inputs:
            consumers.setdefault(inp, []).append(layer.index)
    changed = True
    while changed:
        changed = False
        # Later layers first: a chain of helpers resolves from the node's main layer backwards.
        for layer in reversed(layers):
            if layer.index in result.layer_nodes or not layer.outputs or is_reformat(layer):
                continue
            readers = [i for out in layer.outputs for i in consumers.get(out, [])]
            if not readers or any(i not in result.layer_nodes for i in readers):
                continue
            owners = {frozenset(result.layer_nodes[i]) for i in readers}
            if len(owners) == 1:
                only = next(iter(owners))
                if len(only) == 1:
                    result.layer_nodes[layer.index] = only
                    result.evidence[layer.index] = "helper"
                    changed = True


def _split_top(text: str) -> list[str]:
    """Split on ', ' at parenthesis depth 0 (the argument list of ``PWN(a, PWN(b, c))``)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def describe_network(network) -> list[LayerDesc]:
    """Turn a TensorRT ``INetworkDefinition`` into :class:`LayerDesc` objects.

    Reads ``name``, ``type``, ``metadata`` (TensorRT 10+; '' before), and every input and
    output tensor name. Needs TensorRT only through the object passed in.
    """
    out = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        inputs = []
        for i in range(layer.num_inputs):
            tensor = layer.get_input(i)
            if tensor is not None:  # optional inputs may be absent
                inputs.append(tensor.name)
        outputs = [layer.get_output(i).name for i in range(layer.num_outputs)]
        out.append(
            LayerDesc(
                index=index,
                name=layer.name,
                layer_type=getattr(layer.type, "name", str(layer.type)),
                metadata=str(getattr(layer, "metadata", "") or ""),
                inputs=tuple(inputs),
                outputs=tuple(outputs),
            )
        )
    return out
