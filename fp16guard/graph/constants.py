"""Input-independent float values of a graph, as the folding passes read and rewrite them.

A weight reaches a Conv in one of three ways: an initializer, a ``Constant`` node, or a
``ConstantOfShape`` node (a *fill*: every element is the node's ``value`` attribute, default 0.0).
The ONNX project's own test CNNs (``light_vgg19``, ``light_resnet50``...) store every weight as
a fill so the files stay small; exporters use fills for zero biases and masks. The folding
passes (:mod:`fp16guard.graph.fold_batchnorm`, :mod:`fp16guard.graph.fold_scales`) multiply
weights by scales; :class:`ConstantTable` lets them do that without caring which form a weight
has, and keeps a fill a fill when the result is still uniform (a 102 M-element VGG-19 matrix
stays one attribute instead of becoming 411 MB of initializer).

Only FLOAT (FP32) values of the main graph count; a fill's shape input may be anything (it only
sets the shape, and scaling a fill never changes its shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import ModelError
from fp16guard.graph.info import NameAllocator, subgraphs

__all__ = ["Fill", "ConstantTable", "drop_unread_constants"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Fill:
    """A ``ConstantOfShape`` output: ``value`` repeated over the shape its ``shape_input`` holds.

    Attributes:
        value: the repeated element (float32 range).
        shape_input: name of the node's INT64 shape input.
        shape: the shape, when ``shape_input`` is an initializer (None: computed at run time).
    """

    value: float
    shape_input: str
    shape: tuple[int, ...] | None


def _float_attr_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The FLOAT value of a Constant node (None for other types or forms)."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.asarray(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), dtype=np.float32)
    return None


def _fill_value(node: onnx.NodeProto) -> float | None:
    """The element of a ConstantOfShape node when it is FLOAT (absent attribute: 0.0 FLOAT)."""
    for a in node.attribute:
        if a.name == "value":
            if a.t.data_type != TensorProto.FLOAT:
                return None
            return float(numpy_helper.to_array(a.t).reshape(-1)[0])
    return 0.0


class ConstantTable:
    """The FLOAT constants of a model's main graph: initializers (not graph inputs), Constant
    outputs and ConstantOfShape fills, by tensor name. Built once; reads the model only."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        inputs = {v.name for v in graph.input}
        self.inits = {t.name: t for t in graph.initializer if t.name not in inputs}
        self.consts: dict[str, np.ndarray] = {}
        self.fills: dict[str, Fill] = {}
        for node in graph.node:
            if node.domain not in _DEFAULT_DOMAINS or not node.output or not node.output[0]:
                continue
            if node.op_type == "Constant":
                value = _float_attr_value(node)
                if value is not None:
                    self.consts[node.output[0]] = value
            elif node.op_type == "ConstantOfShape" and node.input and node.input[0]:
                value = _fill_value(node)
                if value is not None:
                    shape = self.inits.get(node.input[0])
                    dims = None
                    if shape is not None and shape.data_location != TensorProto.EXTERNAL:
                        dims = tuple(int(d) for d in numpy_helper.to_array(shape).reshape(-1))
                    self.fills[node.output[0]] = Fill(value, node.input[0], dims)

    def is_const(self, name: str) -> bool:
        """Whether ``name`` is a constant this table knows (any float type for initializers)."""
        return bool(name) and (name in self.inits or name in self.consts or name in self.fills)

    def probe(self, name: str) -> np.ndarray:
        """Values of ``name`` that stand for all of them in element-wise checks (range, FP16
        faithfulness): the full array, or one element for a fill.

        Raises:
            ModelError: an initializer's external data is not loaded.
        """
        if name in self.fills:
            return np.asarray([self.fills[name].value], dtype=np.float32)
        if name in self.inits:
            tensor = self.inits[name]
            if tensor.data_location == TensorProto.EXTERNAL:
                raise ModelError(f"initializer {name!r} has external data that is not loaded; expected a model loaded with its weights (load_model(path))")
            return numpy_helper.to_array(tensor)
        return self.consts[name]

    def array(self, name: str) -> np.ndarray | None:
        """The whole value of ``name`` (a fill expanded to its shape), or None when a fill's shape
        is only known at run time."""
        fill = self.fills.get(name)
        if fill is not None:
            return None if fill.shape is None else np.full(fill.shape, fill.value, dtype=np.float32)
        return self.probe(name)

    def rewrite(self, name: str, value: np.ndarray, new_name: str, alloc: NameAllocator) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """What stores ``value`` (float32) under ``new_name``: a fill when ``name`` is a fill and
        ``value`` is uniform (one element, or all elements equal, of the fill's shape), else an
        initializer.

        Returns:
            ``(nodes, initializers)`` to add; a new node comes before its readers.
        """
        value = np.asarray(value, dtype=np.float32)
        fill = self.fills.get(name)
        uniform = value.size > 0 and bool(np.all(value.reshape(-1) == value.reshape(-1)[0]))
        if fill is not None and uniform and (value.size == 1 or fill.shape is None or tuple(value.shape) == fill.shape):
            element = numpy_helper.from_array(np.asarray([value.reshape(-1)[0]], dtype=np.float32), "")
            node = helper.make_node("ConstantOfShape", [fill.shape_input], [new_name], name=alloc.new(f"{new_name}__fill"), value=element)
            return [node], []
        if fill is not None and value.size == 1 and fill.shape is not None:
            value = np.full(fill.shape, value.reshape(-1)[0], dtype=np.float32)
        return [], [numpy_helper.from_array(value, new_name)]


def drop_unread_constants(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Remove Constant/ConstantOfShape nodes whose outputs nobody reads (and that are not in
    ``keep``, e.g. graph outputs), then initializers nobody reads. Edits ``graph`` in place."""
    def read(g: onnx.GraphProto) -> set[str]:
        names = {n for node in g.node for n in node.input} | {o.name for o in g.output}
        for node in g.node:
            for sub in subgraphs(node):
                names |= read(sub)
        return names

    used = read(graph) | keep
    dead = [n for n in graph.node if n.op_type in ("Constant", "ConstantOfShape") and n.domain in _DEFAULT_DOMAINS and not any(o in used for o in n.output if o)]
    for node in dead:
        graph.node.remove(node)
    if dead:
        used = read(graph) | keep
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)

