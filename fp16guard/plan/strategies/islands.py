"""Cost-aware islands: a short FP16 run between FP32 nodes that costs more in Casts than it saves.

Every FLOAT tensor that crosses between an FP16 and an FP32 node costs one Cast at run time
(:func:`fp16guard.graph.convert.to_mixed_precision` shares one Cast per tensor and direction).
A run of FP16 nodes squeezed between FP32 nodes pays a Cast on each tensor entering and leaving
it; when the run holds only cheap, memory-bound ops (activations, element-wise arithmetic,
reshapes), running it in FP32 instead is faster and never less accurate.

**Cost model**, in units of one FP32 element-wise op's time per element, fitted on the lent H200
(onnxruntime-gpu 1.31.1, CUDA provider, batch 32, ``benchmarks/island_cost.py``, 2026-12-02; see
``docs/FOLDING.md``):

* a Cast at a run's border costs :data:`CAST_COST` = 1.0 per element (measured 1.806 against an
  FP32 element-wise op's 1.808 µs per million elements, least squares over 14 runs);
* running a memory-bound node in FP16 instead of FP32 saves :data:`FP16_SAVING` = 0.12 per
  element of each of its float inputs and outputs (measured 0.215 µs per million: onnxruntime's
  FP16 element-wise kernels are only ~20% faster than FP32 ones, far from half the time that
  halving the bytes suggests — the byte model this replaced, 6 : 2, put break-even at 3 slots
  per border and kept chains of 4-8 ops FP16 that were 1-4% faster in FP32);
* tensors of one run are taken to be of similar size (true of the element-wise and shape ops
  such runs are made of), so element counts cancel out;
* a run containing a compute op (Conv, ConvTranspose, Gemm, MatMul, Einsum, a recurrent op, or a
  subgraph node whose body holds such work) is never moved: its arithmetic, not its memory
  traffic, decides, and FP16 tensor cores win it.

A run (a maximal set of FP16 nodes connected through FLOAT tensors) moves to FP32 when its Casts
cost at least what FP16 saves on it: ``1.0 * border tensors >= 0.12 * float slots`` — break-even
at about 8.3 slots per border, i.e. chains of up to 8 single-input ops between two FP32 nodes
move (measured break-even: 8.4-8.5). An isolated FP32 node among FP16 ones is the other side of
the same trade: it keeps FP32 (a rule pinned it for its values, which FP16 cannot hold) and its
inputs and outputs are cast at its borders, one Cast per tensor; its FP16 neighbours are never
pulled into FP32 for it (measured: a Softmax or Sigmoid kept FP32 between FP16 Convs costs 24 µs,
13% of that small graph, where pulling the Convs to FP32 would cost their tensor-core speed).

Limits: the model is per element; at batch 1 the H200 is launch-bound and every FP16 run timed
was slower than FP32 (7-33%), which no per-element model sees. TensorRT fuses element-wise ops
into neighbouring layers, where these costs do not apply.
"""

from __future__ import annotations

from typing import Mapping

import onnx

from fp16guard.graph.info import fp16_slots, opset_map, tensor_types

__all__ = ["CAST_COST", "FP16_SAVING", "merge_islands"]

#: Cost of one border Cast per element, in FP32 element-wise op times (H200 fit, module docstring).
CAST_COST = 1.0
#: Saving per element of each float input and output when a memory-bound node runs in FP16,
#: in the same unit.
FP16_SAVING = 0.12
#: Runs holding one of these are never moved: arithmetic decides there, not memory traffic. A
#: subgraph node counts: its body (an LSTM inside an If) is work the per-element model cannot see.
_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN", "If", "Loop", "Scan"})


def merge_islands(model: onnx.ModelProto, plan: Mapping) -> dict:
    """Move cost-losing FP16 runs to FP32 (see the module docstring).

    Args:
        model: the FP32 model the plan is for.
        plan: a ``plan.json`` dict.

    Returns:
        A new plan dict: moved nodes join ``fp32_nodes`` with reason ``cost_island``, ``counts``
        follow, and ``islands`` records each moved run (``nodes``, ``border_tensors``,
        ``float_slots``, ``cast_cost``, ``fp16_saving``, in FP32 element-wise op times per
        element). The input is not modified.
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
        cast, saving = round(CAST_COST * len(border), 6), round(FP16_SAVING * slots, 6)
        if not border or cast < saving:
            continue
        moved.append({"nodes": sorted(names), "border_tensors": len(border), "float_slots": slots, "cast_cost": cast, "fp16_saving": saving})
        for n in nodes:
            entries.append(
                {
                    "name": n.name,
                    "op_type": n.op_type,
                    "inputs": [i for i in n.input if i],
                    "outputs": [o for o in n.output if o],
                    "reason": "cost_island",
                    "reasons": ["cost_island"],
                    "details": [f"an FP16 run of {len(names)} memory-bound node(s) between FP32 nodes: its {len(border)} Cast(s) cost {cast:g} FP32 element-wise ops per element, FP16 would save {saving:g}"],
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
