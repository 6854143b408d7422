"""Shrink policy: give nodes back to FP16 for as long as the gate holds, costliest first.

A passing FP32 set is rarely minimal: repair pins by attribution, rules pin by what values look
like. :class:`CostDdmin` returns nodes to FP16 in chunks, delta-debugging style:

1. The returnable nodes, sorted by cost (estimated FLOPs, :mod:`fp16guard.plan.cost`; plus a
   small per-node term, so FP32 node count matters too), are cut into ``n`` chunks of equal cost,
   starting with ``n = 1`` (everything at once); the costliest node leads the first chunk.
2. Each chunk is tried in order: the candidate with that chunk back in FP16 is checked. Accepted:
   the chunk stays FP16 and ``n`` drops by one (larger steps again). All chunks refused: ``n``
   doubles, until chunks are single nodes and every one was refused — then the set is
   1-minimal: no single node can go back to FP16.
3. The checker's budget ends it early; what was returned so far stays returned.

The policy only says what to try (:meth:`CostDdmin.next_chunk`) and hears how it went
(:meth:`CostDdmin.feedback`); :meth:`CostDdmin.clone` lets a caller play outcomes forward
without touching it, which is how the search knows which candidates it may need next and checks
them ahead of need (:mod:`fp16guard.plan.search.speculate`).

Equal-cost chunks make the costliest nodes singletons first: a Conv that can go back to FP16 is
found within a few checks, while cheap element-wise nodes travel in large groups.
"""

from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["CostDdmin", "NODE_WEIGHT"]

#: The per-node term of a node's weight, as a share of the mean node cost.
NODE_WEIGHT = 0.1


def _chunks(order: Sequence[str], weight: Mapping[str, float], n: int) -> list[tuple[str, ...]]:
    """``order`` cut into at most ``n`` consecutive chunks of about equal total weight."""
    total = sum(weight[x] for x in order)
    chunks: list[list[str]] = [[]]
    acc = 0.0
    for name in order:
        if chunks[-1] and acc >= total * len(chunks) / n and len(chunks) < n:
            chunks.append([])
        chunks[-1].append(name)
        acc += weight[name]
    return [tuple(c) for c in chunks if c]


class CostDdmin:
    """The shrink policy (see the module docstring).

    Args:
        returnable: FP32 nodes that may go back to FP16.
        costs: estimated FLOPs per node (missing: the mean).
    """

    def __init__(self, returnable: Sequence[str], costs: Mapping[str, float]) -> None:
        known = [costs[n] for n in returnable if n in costs]
        mean = (sum(known) / len(known)) if known else 1.0
        self.weight = {n: float(costs.get(n, mean)) + NODE_WEIGHT * mean for n in returnable}
        self.remaining = sorted(returnable, key=lambda n: -self.weight[n])
        self.n = 1
        self._chunks = _chunks(self.remaining, self.weight, self.n)
        self._at = 0
        self.done = not self.remaining
        self.refused: list[frozenset[str]] = []

    def next_chunk(self) -> tuple[str, ...] | None:
        """The nodes to try returning next; None when the set is 1-minimal.

        A chunk that holds a chunk already refused is skipped as refused: with more of the
        model in FP16 since, it cannot pass now (FP16 error only grows with what runs in FP16).
        """
        while not self.done:
            chunk = self._chunks[self._at]
            if not any(r <= set(chunk) for r in self.refused):
                return chunk
            self.feedback(False)
        return None

    def feedback(self, accepted: bool) -> None:
        """Say whether the candidate with :meth:`next_chunk` returned was accepted."""
        chunk = self._chunks[self._at]
        if not accepted and frozenset(chunk) not in self.refused:
            self.refused.append(frozenset(chunk))
        if accepted:
            gone = set(chunk)
            self.remaining = [n for n in self.remaining if n not in gone]
            self.n = max(1, self.n - 1)
            self._restart()
            return
        self._at += 1
        if self._at < len(self._chunks):
            return
        if self.n >= len(self.remaining):
            self.done = True
            return
        self.n = min(len(self.remaining), self.n * 2)
        self._restart()

    def clone(self) -> "CostDdmin":
        """An independent copy in the same state (the weights are shared: never changed)."""
        other = object.__new__(CostDdmin)
        other.weight = self.weight
        other.remaining = list(self.remaining)
        other.n = self.n
        other._chunks = list(self._chunks)
        other._at = self._at
        other.done = self.done
        other.refused = list(self.refused)
        return other

    def _restart(self) -> None:
        self.done = not self.remaining
        self._chunks = _chunks(self.remaining, self.weight, self.n) if self.remaining else []
        self._at = 0
