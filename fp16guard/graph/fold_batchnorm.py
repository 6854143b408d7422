"""Graph pass: fold inference-mode BatchNormalization into the Conv that feeds it.

``BN(Conv(x, W, B))`` with per-channel ``k = gamma / sqrt(var + eps)`` equals
``Conv(x, W * k[:, None, ...], (B - mean) * k + beta)``: one Conv instead of two nodes. Scale
folding (:mod:`fp16guard.graph.fold_scales`) runs after this pass so that each Conv is one
rescale point with its normalisation already in its weights (a separate BN would otherwise
read the Conv's large output).

Contract of :func:`fold_batchnorm`:

* **Requires** (checked, :class:`~fp16guard.errors.ModelError` otherwise): the model's weights
  are loaded (no external-data initializer among the tensors a fold would read) and node names
  are unique (as :func:`fp16guard.io.model.load_model` makes them).
* A pair is folded only when: the Conv (default domain, group any) has a FLOAT constant
  weight and, if present, a FLOAT constant bias; its output is read by that one BN only and
  is not a graph output; the BN has a single output (inference mode: no running-statistics
  outputs, ``training_mode`` 0 or absent) and FLOAT constant scale, bias, mean and variance
  of one value per output channel. Anything else is left as it is. A constant is an
  initializer, a Constant node or a ConstantOfShape fill of known shape
  (:class:`~fp16guard.graph.constants.ConstantTable`); a folded fill stays a fill when the
  result is uniform, else becomes an initializer.
* **Ensures** (checked): the result passes ``onnx.checker.check_model``; graph inputs and
  outputs are unchanged; the folded Conv keeps its node name and now writes the BN's output
  tensor (the name the statistics know), so no tensor name that survives changes meaning; the
  BN node and the Conv's former output tensor are gone, and so are constants nobody reads any
  more. Weight and bias tensors read by any other node are copied (``<name>__bnfold``), never edited under another reader.
* Returns a new model and the list of folds ``{"conv", "batchnorm", "output"}``; the input model
  is not modified. Arithmetic is float64, stored as float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fp16guard.errors import ModelError
from fp16guard.graph.constants import ConstantTable
from fp16guard.graph.info import NameAllocator, all_names
from fp16guard.graph.tidy import interface, tidy_after_removal
from fp16guard.io.model import PROTOBUF_LIMIT

__all__ = ["fold_batchnorm"]


def _requires(model: onnx.ModelProto) -> None:
    names = [n.name for n in model.graph.node]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise ModelError("fold_batchnorm needs unique, non-empty node names; expected a model loaded with fp16guard.io.model.load_model")


def _ensures(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    if interface(before) != interface(after):
        raise ModelError("fold_batchnorm changed the graph inputs or outputs (a bug): expected them unchanged")
    if after.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(after)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict]]:
    """Fold every foldable Conv -> BatchNormalization pair (see the module docstring).

    Args:
        model: the FP32 model, weights loaded (not modified).

    Returns:
        ``(new_model, folds)``; ``folds`` lists ``{"conv", "batchnorm", "output"}`` per pair.

    Raises:
        ModelError: a pre- or post-condition fails (see the module docstring).
    """
    _requires(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    table = ConstantTable(model)
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {v.name for v in graph.output}
    producer = {o: node for node in graph.node for o in node.output if o}
    alloc = NameAllocator(all_names(model))
    added_before: dict[str, list[onnx.NodeProto]] = {}  # conv name -> fill nodes it now reads

    def float_value(name: str):
        """The FLOAT constant ``name`` as float64 (a fill expanded), or None."""
        if not table.is_const(name) or (name in inits and inits[name].data_type != TensorProto.FLOAT):
            return None
        value = table.array(name)
        return None if value is None or value.dtype != np.float32 else value.astype(np.float64)

    def store(name: str, value: np.ndarray, conv: onnx.NodeProto) -> str:
        """Write ``value`` under ``name`` when it is an initializer only the folded Conv reads,
        else under a copy (a fill stays a fill when ``value`` is uniform)."""
        array = np.asarray(value, dtype=np.float32)
        if readers.get(name, 0) == 1 and name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(array, name))
            return name
        new = alloc.new(f"{name}__bnfold")
        nodes, tensors = table.rewrite(name, array, new, alloc)
        added_before.setdefault(conv.name, []).extend(nodes)
        for tensor in tensors:
            graph.initializer.append(tensor)
            inits[new] = tensor
        return new

    folds: list[dict] = []
    removed: set[str] = set()
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len([o for o in bn.output if o]) != 1:
            continue
        if _attr(bn, "training_mode", 0):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
            continue
        mid = bn.input[0]
        if readers.get(mid, 0) != 1 or mid in outputs or len(conv.input) < 2:
            continue
        weight = float_value(conv.input[1])
        bias = float_value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(0)
        params = [float_value(n) for n in bn.input[1:5]] if len(bn.input) >= 5 else [None]
        if weight is None or bias is None or any(p is None for p in params) or weight.ndim < 3:
            continue
        gamma, beta, mean, var = (p.reshape(-1) for p in params)
        channels = weight.shape[0]
        if any(p.size != channels for p in (gamma, beta, mean, var)) or (bias.size not in (0, channels)):
            continue
        eps = float(_attr(bn, "epsilon", 1e-5))
        k = gamma / np.sqrt(var + eps)
        new_w = weight * k.reshape((-1,) + (1,) * (weight.ndim - 1))
        new_b = ((bias if bias.size else 0.0) - mean) * k + beta
        w_name = store(conv.input[1], new_w, conv)
        if len(conv.input) > 2 and conv.input[2]:
            b_name = store(conv.input[2], new_b, conv)
        else:
            b_name = alloc.new(f"{conv.name}__bnfold_bias")
            tensor = numpy_helper.from_array(new_b.astype(np.float32), b_name)
            graph.initializer.append(tensor)
            inits[b_name] = tensor
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, w_name, b_name])
        conv.output[0] = bn.output[0]
        removed.add(bn.name)
        folds.append({"conv": conv.name, "batchnorm": bn.name, "output": bn.output[0]})

    if folds:
        kept = []
        for n in graph.node:
            if n.name not in removed:
                kept.extend(added_before.get(n.name, []))
                kept.append(n)
        del graph.node[:]
        graph.node.extend(kept)
        tidy_after_removal(graph)  # the Convs' former outputs and unread constants go
    _ensures(model, result)
    return result, folds

