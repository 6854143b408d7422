"""Graph pass: onnxruntime's weight fusions, done in FP16 as onnxruntime does them.

Why: before it runs a model, onnxruntime rewrites it, on every provider and at its default level
(basic and up). Three rewrites change stored weights: ``ConvMulFusion`` (a Conv followed by a Mul
by a constant: the weights and bias are multiplied by it), ``ConvAddFusion`` (a per-channel Add
goes into the bias) and ``ConvBNFusion`` (a BatchNormalization goes into the weights and bias).
On an FP16 Conv the results are stored in FP16: a weight of 4.4e-5 times a converter factor of
2**-14 becomes 0. A folded light ResNet-50 verified at 6.4e-4 through FP16 storage emulation of
the unrewritten graph and ran 0.49 off on onnxruntime (CUDA and CPU alike; docs/FACTS.md #6a).
Verification emulates FP16 storage of the graph after this pass.

When the pass fuses (what onnxruntime 1.31/1.32 was seen to fuse, checked in
``tests/test_ort_fusions.py``): a default-domain Conv with a constant weight (initializer,
Constant or ConstantOfShape of an initializer shape) and an optional constant bias, whose output
is read by exactly one node and is not a graph output, followed by

* ``Mul`` by a constant of shape ``()`` or per output channel (``[C, 1, ...]`` one rank below the
  weight, or ``[1, C, 1, ...]`` of its rank): ``W' = W * k``, ``B' = B * k``;
* ``Add`` of a constant per output channel (a scalar is not fused): ``B' = B + c``;
* an inference ``BatchNormalization`` with constant parameters:
  ``W' = W * s / sqrt(v + eps)``, ``B' = (B - m) * s / sqrt(v + eps) + b``;

only when the Conv's weight is FLOAT16 and the second node computes in FLOAT16 too (an FP32 node
behind a Cast is not adjacent; FP32 fusions change nothing FP16 storage emulation would see).
Arithmetic in float64, each result rounded once to FLOAT16. The fused Conv keeps its name and
writes the second node's output; the second node is gone.

Contract of :func:`fuse_like_onnxruntime`: requires a valid model, weights loaded (ModelError
for external data not loaded); returns a new model (the input is not modified) and the names of
the Convs it fused; ensures (checked) graph inputs and outputs unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import ModelError
from fp16guard.graph.info import NameAllocator, all_names
from fp16guard.graph.tidy import interface, tidy_after_removal

__all__ = ["fuse_like_onnxruntime"]

_DEFAULT = ("", "ai.onnx")


def _value_attr(node: onnx.NodeProto | None) -> onnx.TensorProto | None:
    """The TENSOR ``value`` attribute of a Constant/ConstantOfShape node (None when absent)."""
    if node is None:
        return None
    return next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)


class _Constants:
    """Values of the graph's initializers, Constant outputs and ConstantOfShape fills whose shape
    is an initializer, by tensor name; a fill is expanded only when asked for (a light VGG-19
    holds 143 M weight elements as fills)."""

    def __init__(self, graph: onnx.GraphProto):
        inputs = {v.name for v in graph.input}
        self._inits = {t.name: t for t in graph.initializer if t.name not in inputs}
        self._nodes: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            if node.domain in _DEFAULT and node.output and node.op_type in ("Constant", "ConstantOfShape"):
                self._nodes[node.output[0]] = node

    def get(self, name: str) -> np.ndarray | None:
        """The value of ``name``, or None when it is not such a constant.

        Raises:
            ModelError: an initializer's external data is not loaded.
        """
        if name in self._inits:
            tensor = self._inits[name]
            if tensor.data_location == TensorProto.EXTERNAL:
                raise ModelError(f"initializer {name!r} has external data that is not loaded; expected a model loaded with its weights")
            return numpy_helper.to_array(tensor)
        node = self._nodes.get(name)
        value = _value_attr(node)
        if value is None:
            return None
        if node.op_type == "Constant":
            return numpy_helper.to_array(value)
        shape = self.get(node.input[0]) if node.input and node.input[0] in self._inits else None
        return None if shape is None else np.full(tuple(int(d) for d in shape.reshape(-1)), numpy_helper.to_array(value).reshape(-1)[0])

    def dtype(self, name: str):
        """The element type of constant ``name`` without expanding it (None: not a constant)."""
        if name in self._inits:
            return onnx.helper.tensor_dtype_to_np_dtype(self._inits[name].data_type)
        value = _value_attr(self._nodes.get(name))
        return None if value is None else onnx.helper.tensor_dtype_to_np_dtype(value.data_type)


def _per_channel(k: np.ndarray, channels: int, weight_rank: int, scalar_ok: bool) -> np.ndarray | None:
    """``k`` as a vector of ``channels`` values when its shape is one onnxruntime fuses, else None."""
    shape = tuple(k.shape)
    if shape == ():
        return np.full(channels, float(k), dtype=np.float64) if scalar_ok else None
    ones = (1,) * (weight_rank - 2)
    if shape in ((channels,) + ones, (1, channels) + ones):
        return k.reshape(-1).astype(np.float64)
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    a = next((a for a in node.attribute if a.name == name), None)
    return helper.get_attribute_value(a) if a is not None else default


def fuse_like_onnxruntime(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Apply onnxruntime's FP16 weight fusions (see the module docstring).

    Args:
        model: a mixed-precision model, weights loaded (not modified).

    Returns:
        ``(new_model, fused_conv_names)``.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    values = _Constants(graph)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.output}
    alloc = NameAllocator(all_names(model))
    fused: list[str] = []
    removed: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.domain not in _DEFAULT or len(conv.input) < 2 or id(conv) in removed:
            continue
        if values.dtype(conv.input[1]) != np.float16:
            continue  # checked first: only FP16 Convs are expanded and considered
        out = conv.output[0]
        nxt = readers.get(out, [])
        if out in outputs or len(nxt) != 1 or nxt[0].domain not in _DEFAULT or nxt[0].op_type not in ("Mul", "Add", "BatchNormalization"):
            continue
        second = nxt[0]
        w = values.get(conv.input[1])
        bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else ""
        b = values.get(bias_name) if bias_name else None
        if w is None or (bias_name and b is None) or w.ndim < 3:
            continue
        channels = w.shape[0]
        weight = w.astype(np.float64)
        bias = b.astype(np.float64).reshape(-1) if b is not None else np.zeros(channels)
        other = [n for n in second.input if n != out]
        if second.op_type in ("Mul", "Add") and len(second.input) == 2 and len(other) == 1 and values.dtype(other[0]) == np.float16:
            k = values.get(other[0])
            if k is None:
                continue
            vector = _per_channel(k, channels, w.ndim, scalar_ok=second.op_type == "Mul")
            if vector is None:
                continue
            if second.op_type == "Mul":
                weight = weight * vector.reshape((-1,) + (1,) * (w.ndim - 1))
                bias = bias * vector
            else:
                bias = bias + vector
        elif second.op_type == "BatchNormalization" and len([o for o in second.output if o]) == 1 and not _attr(second, "training_mode", 0):
            params = [values.get(n) for n in second.input[1:5]]
            if len(params) != 4 or any(p is None or p.dtype != np.float16 or p.size != channels for p in params):
                continue
            s, bb, m, v = (p.astype(np.float64).reshape(-1) for p in params)
            factor = s / np.sqrt(v + float(_attr(second, "epsilon", 1e-5)))
            weight = weight * factor.reshape((-1,) + (1,) * (w.ndim - 1))
            bias = (bias - m) * factor + bb
        else:
            continue
        w_name, b_name = alloc.new(f"{conv.name}__ort_fused_w"), alloc.new(f"{conv.name}__ort_fused_b")
        new_inits += [numpy_helper.from_array(weight.astype(np.float16), w_name), numpy_helper.from_array(bias.astype(np.float16), b_name)]
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, w_name, b_name])
        conv.output[0] = second.output[0]
        removed.add(id(second))
        fused.append(conv.name)
    if fused:
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(new_inits)
        tidy_after_removal(graph)
    if interface(model) != interface(result):
        raise ModelError("fuse_like_onnxruntime changed the graph inputs or outputs (a bug): expected them unchanged")
    return result, fused
