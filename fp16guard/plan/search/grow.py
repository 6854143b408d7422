"""Growth policy: which FP16 nodes to pin next when a candidate fails, found by attribution.

Given a failing check, :class:`AttributionGrowth` runs the candidate beside FP32 and measures the
relative error of every tensor (:func:`fp16guard.verify.attribute.global_errors`), walks from the
failing outputs upstream to the nodes where the error appears (:func:`trace_sources`) and pins the
``k`` largest sources:

* an FP16 source is pinned; when most of its own error comes from reading FP16-stored inputs
  (:func:`fp16guard.verify.attribute.local_errors`: e.g. ``(x + 1000) - 1000``) their producers
  are pinned too;
* a source that is FP32 already amplifies the rounding of what it reads (``log`` of small values):
  up to ``k`` FP16 nodes upstream of it along error-carrying tensors are pinned, nearest first;
* nothing traced: the ``k`` FP16 nodes with the largest local error.

``k`` starts at ``ceil(n/64)`` of the ``n`` eligible nodes and **doubles only when the last pin
did not pay**: the failure ratio fell by less than :data:`PROGRESS` of itself. A step that helps
keeps its size, so the batch never outgrows what the error needs; the shrink phase that follows
(:mod:`fp16guard.plan.search.shrink`) returns whatever turned out not to be needed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import onnx

from fp16guard.io.shards import ShardRef
from fp16guard.plan.search.checker import Check

__all__ = ["CARRY", "INPUT_SHARE", "PROGRESS", "AttributionGrowth", "Pin", "fp16_upstream", "trace_sources"]

#: A pinned node whose error is at least this share due to reading FP16-stored activations
#: (``LocalError.input_error``) also pins the producers of those activations.
INPUT_SHARE = 0.5
#: An input carries a node's error when its relative error is at least this share of the output's.
CARRY = 0.25
#: A pin pays when the failure ratio falls by at least this share of itself; else ``k`` doubles.
PROGRESS = 0.25


@dataclass(frozen=True)
class Pin:
    """One node to keep FP32, and why.

    Attributes:
        name: node name.
        local_error: its output's relative error in FP16 on exact FP32 inputs (None: not measured).
        why: one sentence for the plan record.
        trigger: the tensor that made it a candidate.
    """

    name: str
    local_error: float | None
    why: str
    trigger: str


def _fmt(value: float) -> str:
    return "inf (not finite)" if math.isinf(value) else f"{value:.3g}"


def trace_sources(model: onnx.ModelProto, errors: dict[str, float], start: Sequence[str], carry: float = CARRY) -> list[tuple[str, str, float]]:
    """Follow the error from ``start`` tensors upstream to the nodes where it appears.

    A node's input *carries* the error when its relative error is at least ``carry`` times the
    output's; the walk continues through carriers. A node none of whose inputs carries its
    output's error is a **source**: the error appears there.

    Returns:
        ``(node, output tensor, relative error of that output)`` per source, largest error first.
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    found: dict[str, tuple[str, float]] = {}
    seen: set[str] = set()
    stack = list(start)
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor not in producers:
            continue
        seen.add(tensor)
        node = producers[tensor]
        out = errors.get(tensor, 0.0)
        if out <= 0:
            continue
        carriers = [i for i in node.input if errors.get(i, 0.0) > 0 and errors[i] >= carry * out]
        if carriers:
            stack.extend(carriers)
        elif out > found.get(node.name, ("", -1.0))[1]:
            found[node.name] = (tensor, out)
    return sorted(((n, t, e) for n, (t, e) in found.items()), key=lambda s: -s[2])


def fp16_upstream(model: onnx.ModelProto, node_name: str, errors: dict[str, float], fp32: set[str], eligible: set[str], limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` FP16 nodes upstream of ``node_name``, nearest first, along tensors that
    carry any error or are not float (breadth-first, through FP32 nodes and FP16 ones alike).

    Returns ``(producer, tensor it feeds on the way)`` pairs.
    """
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n.name for n in model.graph.node for o in n.output if o}
    found: list[tuple[str, str]] = []
    seen: set[str] = set()

    def carries(tensor: str) -> bool:
        # Float tensors carry error when measured off FP32; integer ones (the uint8 of a dynamic
        # quantisation, a shape) are not measured and are followed: their values may have moved.
        return errors.get(tensor, 0.0) > 0 or tensor not in errors

    queue = deque(i for i in nodes[node_name].input if i and carries(i))
    while queue and len(found) < limit:
        tensor = queue.popleft()
        if tensor in seen or tensor not in producers:
            continue
        seen.add(tensor)
        producer = producers[tensor]
        if producer in eligible and producer not in fp32:
            found.append((producer, tensor))
        queue.extend(i for i in nodes[producer].input if i and carries(i))
    return found


class AttributionGrowth:
    """The growth policy (see the module docstring).

    Args:
        model: the FP32 model, weights loaded.
        eligible: nodes that may be pinned (FP16-capable, not forced to FP16), in graph order.
        shards: calibration shards attribution runs on.
        samples: calibration samples attribution uses.
        batch_size: samples per inference call.
        target_rel_error: the relative error an output must reach (decides which outputs fail).
    """

    def __init__(self, model: onnx.ModelProto, eligible: Sequence[str], shards: Sequence[ShardRef], samples: int, batch_size: int | None, target_rel_error: float) -> None:
        self.model = model
        self.eligible = list(eligible)
        self.eligible_set = set(eligible)
        self.shards = list(shards)
        self.samples = samples
        self.batch_size = batch_size
        self.target = target_rel_error
        self.nodes = {n.name: n for n in model.graph.node}
        self.producers = {o: n.name for n in model.graph.node for o in n.output if o}
        self.k = 0

    def _size(self, candidates: int, last: Check, previous: Check | None) -> int:
        if self.k == 0:
            self.k = max(1, math.ceil(candidates / 64))
        elif previous is not None and not last.score <= (1.0 - PROGRESS) * previous.score:
            self.k *= 2  # the last pin did not pay: the error is spread wider than k nodes
        return self.k

    def propose(self, fp32: set[str], last: Check, previous: Check | None, tag: str) -> list[Pin]:
        """Nodes to pin after ``last`` failed (``previous``: the check before it, if any)."""
        from fp16guard.verify.attribute import global_errors, local_errors

        candidates = [n for n in self.eligible if n not in fp32]
        if not candidates:
            return []
        k = self._size(len(candidates), last, previous)
        pinned: dict[str, Pin] = {}

        def pin(name: str, local: float | None, why: str, trigger: str) -> None:
            if name not in fp32 and name not in pinned:
                pinned[name] = Pin(name, local, why, trigger)

        errors = global_errors(self.model, fp32, self.shards, self.samples, self.batch_size)
        outputs = [o.name for o in self.model.graph.output if o.name in errors]
        failing = [o for o in outputs if errors[o] > self.target] or [o for o in outputs if errors[o] > 0]
        sources = trace_sources(self.model, errors, failing)[:k]
        fp16_sources = [name for name, _, _ in sources if name in self.eligible_set and name not in fp32]
        local = {e.node: e for e in local_errors(self.model, fp16_sources, self.shards, self.samples, self.batch_size)} if fp16_sources else {}
        for name, tensor, err in sources:
            shown = _fmt(err)
            if name in self.eligible_set and name not in fp32:
                le = local.get(name)
                pin(name, None if le is None or math.isinf(le.rel_error) else le.rel_error,
                    f"the FP16 error reaching the failing outputs appears at its output {tensor!r} ({shown} of its max |x|; its inputs carry little) ({tag})", tensor)
                if le is not None and le.input_error > 0 and le.input_error >= INPUT_SHARE * le.rel_error:
                    # Most of its error comes from reading FP16-stored activations: their producers go FP32 too.
                    for t in self.nodes[name].input:
                        producer = self.producers.get(t)
                        if producer in self.eligible_set:
                            pin(producer, None, f"produces {t!r}, which {name!r} reads: stored in FP16 it leaves {le.input_error:.3g} of relative error in {name!r} even in FP32 ({tag})", t)
            else:
                # The error appears at a node that is FP32 already (or cannot be FP16): it amplifies
                # the rounding of what it reads (log of tiny values, a division by a small difference).
                for producer, t in fp16_upstream(self.model, name, errors, fp32, self.eligible_set, k):
                    pin(producer, None, f"feeds {t!r} to {name!r} (FP32), whose output {tensor!r} is {shown} off FP32: {name!r} amplifies the FP16 rounding of what it reads ({tag})", t)
        if not pinned:
            # Nothing traced to an FP16 node: fall back to the nodes with the largest local error.
            for rank, err in enumerate(local_errors(self.model, candidates, self.shards, self.samples, self.batch_size)[:k], 1):
                pin(err.node, None if math.isinf(err.rel_error) else err.rel_error,
                    f"in FP16 on exact FP32 inputs, output {err.output!r} is {_fmt(err.rel_error)} of its max |x| off FP32 (rank {rank} by local error, {tag})", err.output)
        return list(pinned.values())
