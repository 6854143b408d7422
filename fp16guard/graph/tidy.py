"""What a graph pass does after it removed or rewired nodes, and the interface it must keep.

Passes that fuse nodes (:mod:`fp16guard.graph.fold_batchnorm`,
:mod:`fp16guard.graph.ort_fusions`) leave behind constants nobody reads and ``value_info``
entries of tensors that no longer exist; an ONNX checker or a later type inference trips on
the latter. They also promise that the model's inputs and outputs are unchanged.
"""

from __future__ import annotations

import onnx

from fp16guard.graph.constants import drop_unread_constants

__all__ = ["interface", "tidy_after_removal"]


def interface(model: onnx.ModelProto) -> list[tuple[str, bytes]]:
    """The graph inputs and outputs of ``model``: names and serialised types, in order."""
    return [(v.name, v.type.SerializeToString()) for v in list(model.graph.input) + list(model.graph.output)]


def tidy_after_removal(graph: onnx.GraphProto) -> None:
    """Drop constants and initializers nobody reads any more, and ``value_info`` entries of
    tensors no node reads or writes. Edits ``graph`` in place; graph outputs are kept."""
    outputs = {v.name for v in graph.output}
    drop_unread_constants(graph, outputs)
    live = outputs | {n for node in graph.node for n in node.input} | {o for node in graph.node for o in node.output}
    kept = [vi for vi in graph.value_info if vi.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept)
