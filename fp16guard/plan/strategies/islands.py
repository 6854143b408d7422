"""Cost-aware islands: a short FP16 run between FP32 nodes that costs more in Casts than it saves.

Every FLOAT tensor that crosses between an FP16 and an FP32 node costs one Cast at run time
(:func:`fp16guard.graph.convert.to_mixed_precision` shares one Cast per tensor and direction).
A run of FP16 nodes squeezed between FP32 nodes pays a Cast on each tensor entering and leaving
it; when the run holds only cheap, memory-bound ops (activations, element-wise arithmetic,
reshapes), running it in FP32 instead is faster and never less accurate.

Applied by the strategies when the folded model is used (:mod:`fp16guard.plan.strategies`).

**Cost model** (bytes moved per element, the unit of memory-bound work; documented in
``docs/FOLDING.md``):

* a Cast reads 4 bytes and writes 2 (or the reverse): **6** per element of each border tensor;
* running a memory-bound node in FP16 instead of FP32 saves **2** bytes per element of each of
  its float inputs and outputs (4 -> 2);
* tensors of one run are taken to be of similar size (true of the element-wise and shape ops
  such runs are made of), so element counts cancel out;
* a run containing a compute op (Conv, ConvTranspose, Gemm, MatMul, Einsum) is never moved: its
  arithmetic, not its memory traffic, decides, and FP16 tensor cores win it.

A run (a maximal set of FP16 nodes connected through FLOAT tensors) moves to FP32 when its Casts
cost at least what FP16 saves on it: ``6 * border tensors >= 2 * float slots of its nodes``. A
single Relu between two FP32 layers: 12 >= 4, it moves; a chain of five element-wise ops with
one tensor in and one out: 12 < 20, it stays FP16. An isolated FP32 node needs nothing more: its
inputs and outputs are already cast at its borders, one Cast per tensor.
"""

from __future__ import annotations

from typing import Mapping

import onnx

from fp16guard.graph.info import fp16_slots, opset_map, tensor_types

__all__ = ["CAST_BYTES", "FP16_SAVING_BYTES", "merge_islands"]

#: Bytes a Cast moves per element (read 4, write 2).
CAST_BYTES = 6
#: Bytes saved per element of each float input and output when a memory-bound node runs in FP16.
FP16_SAVING_BYTES = 2
_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})


def merge_islands(model: onnx.ModelProto, plan: Mapping) -> dict:
    """Move cost-losing FP16 runs to FP32 (see the module docstring).

    Args:
        model: the FP32 model the plan is for.
        plan: a ``plan.json`` dict.

    Returns:
        A new plan dict: moved nodes join ``fp32_nodes`` with reason ``cost_island``, ``counts``
        follow, and ``islands`` records each moved run (``nodes``, ``border_tensors``,
        ``cast_bytes``, ``fp16_saving_bytes``). The input is not modified.
    """
    types = tensor_types(model)
    opsets = opset_map(model)
    fp32 = {e["name"] for e in plan.get("fp32_nodes", [])}
    graph = model.graph
    fp16_nodes = [n for n in graph.node if n.name not in fp32 and fp16_slots(n, opsets, types).status == "fp16"]
    fp16_names = {n.name for n in fp16_nodes}
    producer = {o: n.name for n in graph.node for o in n.output if o}
    readers: dict[str, list[str]] = {}
    for n in graph.node:
        for name in n.input:
            if name:
                readers.setdefault(name, []).append(n.name)
    inits = {t.name for t in graph.initializer}
    outputs = {v.name for v in graph.output}

    def is_float(name: str) -> bool:
        return bool(name) and name not in inits and types.is_float32(name)

    # Connected components of FP16 nodes through FLOAT tensors (union-find over node names).
    parent = {n: n for n in fp16_names}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in fp16_nodes:
        for name in n.output:
            if is_float(name):
                for r in readers.get(name, []):
                    if r in fp16_names:
                        parent[find(r)] = find(n.name)
    runs: dict[str, list[onnx.NodeProto]] = {}
    for n in fp16_nodes:
        runs.setdefault(find(n.name), []).append(n)

    moved: list[dict] = []
    entries = [dict(e) for e in plan.get("fp32_nodes", [])]
    for nodes in runs.values():
        if any(n.op_type in _COMPUTE_OPS for n in nodes):
            continue
        names = {n.name for n in nodes}
        border: set[str] = set()
        slots = 0
        for n in nodes:
            for name in list(n.input) + list(n.output):
                if not is_float(name):
                    continue
                slots += 1
                inside_producer = producer.get(name) in names
                if not inside_producer or name in outputs or any(r not in names for r in readers.get(name, [])):
                    border.add(name)
        cast, saving = CAST_BYTES * len(border), FP16_SAVING_BYTES * slots
        if not border or cast < saving:
            continue
        moved.append({"nodes": sorted(names), "border_tensors": len(border), "cast_bytes": cast, "fp16_saving_bytes": saving})
        for n in nodes:
            entries.append(
                {
                    "name": n.name,
                    "op_type": n.op_type,
                    "inputs": [i for i in n.input if i],
                    "outputs": [o for o in n.output if o],
                    "reason": "cost_island",
                    "reasons": ["cost_island"],
                    "details": [f"an FP16 run of {len(names)} memory-bound node(s) between FP32 nodes: its {len(border)} Cast(s) move {cast} bytes per element, FP16 would save {saving}"],
                    "triggers": [],
                }
            )
    result = dict(plan)
    if moved:
        order = {n.name: i for i, n in enumerate(graph.node)}
        result["fp32_nodes"] = sorted(entries, key=lambda e: order.get(e["name"], len(order)))
        counts = dict(plan.get("counts", {}))
        extra = sum(len(m["nodes"]) for m in moved)
        if "fp32" in counts:
            counts["fp32"] += extra
        if "fp16" in counts:
            counts["fp16"] -= extra
        result["counts"] = counts
    result["islands"] = moved
    return result
