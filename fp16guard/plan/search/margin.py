"""How far the error on unseen data may exceed the error on calibration data: a statistical
margin from how the error varies across calibration samples, not a flat factor.

A check runs its calibration samples in slices (:class:`fp16guard.plan.search.checker.CalibrationChecker`)
and scores each slice alone (the gate's failure ratio, :meth:`fp16guard.verify.metrics.Gate.score`).
Split the slices at random into two halves many times: ``max(score of one half) / max(score of
the other)`` is how much the worst error grows when a model meets as many samples again that it
has not seen. The **inflation** is a high quantile of those ratios (:data:`QUANTILE`), at least 1
and at most :data:`MAX_INFLATION`; a search accepts a candidate when ``score * inflation <= 1``.

- Errors spread evenly over the samples: inflation ~1, the search aims at the gate itself (a model
  whose plan already passes is not made to pay for noise).
- The worst error comes from one sample of many: a new sample can be worse, inflation grows, the
  search aims below the gate (at most at half of it, the former flat margin).
- Fewer than :data:`MIN_SLICES` slices: no statistics; :data:`FALLBACK` (the former flat margin 0.5).

The splits are seeded, so the same scores always give the same inflation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["FALLBACK", "MAX_INFLATION", "MIN_SLICES", "QUANTILE", "SPLITS", "Spread", "inflation"]

#: Random half-splits drawn.
SPLITS = 200
#: Quantile of the half-to-half ratios taken as the inflation.
QUANTILE = 0.9
#: Fewest slices that give a statistic.
MIN_SLICES = 4
#: Inflation without statistics (tolerances x 0.5, the former fixed margin).
FALLBACK = 2.0
#: Largest inflation: never stricter than the former flat margin (tolerances x 0.5). Heavy-tailed
#: per-sample errors (one sample of many dominating) reach it; a larger cap pinned nodes on real
#: models whose holdout passed with room (magika: calibration 0.0154, holdout 0.0102).
MAX_INFLATION = 2.0


@dataclass(frozen=True)
class Spread:
    """The inflation of one check and what it came from.

    Attributes:
        inflation: score multiplier for unseen data (1 <= inflation <= MAX_INFLATION).
        slices: slices the statistic was drawn from.
        method: ``half-splits`` (statistics), ``fallback`` (too few slices), ``fixed`` (the
            user set ``repair_margin``) or ``exact`` (every slice scored 0, or non-finite).
    """

    inflation: float
    slices: int
    method: str

    def to_dict(self) -> dict:
        return {"inflation": round(self.inflation, 4), "slices": self.slices, "method": self.method}


def inflation(scores: Sequence[float], fixed_margin: float | None = None, seed: int = 0) -> Spread:
    """The inflation of a candidate whose slices scored ``scores`` (see the module docstring).

    Args:
        scores: per-slice failure ratios (``<= 1`` passes), in slice order.
        fixed_margin: the user's ``repair_margin`` (tolerances times this); None: statistics.
        seed: seed of the half-splits.
    """
    n = len(scores)
    if fixed_margin is not None:
        return Spread(1.0 / fixed_margin, n, "fixed")
    values = np.asarray(scores, dtype=np.float64)
    if n and (not np.isfinite(values).all() or not values.any()):
        return Spread(1.0, n, "exact")
    if n < MIN_SLICES:
        return Spread(FALLBACK, n, "fallback")
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(SPLITS):
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: n // 2]] = True
        seen, unseen = values[mask].max(), values[~mask].max()
        # A half whose samples all scored 0 says nothing about the other's scale: cap the ratio.
        ratios.append(MAX_INFLATION if seen <= 0 else unseen / seen)
    value = float(np.quantile(np.asarray(ratios), QUANTILE))
    value = min(MAX_INFLATION, max(1.0, value if math.isfinite(value) else MAX_INFLATION))
    return Spread(value, n, "half-splits")
