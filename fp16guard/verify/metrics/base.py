"""The gate seam: a :class:`Metric` judges one output of a candidate against FP32.

Every float output is accumulated once (:mod:`fp16guard.verify.compare` keeps the numeric
figures, :class:`fp16guard.verify.task_checks.TaskChecks` the agreement counts; O(1) memory in the
number of samples) and the figures go to the output's metric, which:

- **accumulates** what the built-in figures do not hold (``accumulator()``: a fresh
  :class:`Accumulator` per verification, or None — the built-in metrics need nothing more); one
  with ``merge`` (:class:`MergeableAccumulator`) lets the holdout be split over workers;
- **judges** the figures: a list of :class:`Failure` (empty: passed);
- **scores** them: the failure ratio, ``<= 1`` passes, ``inf`` when the candidate holds NaN/inf —
  one number per output that search policies compare across candidates
  (:mod:`fp16guard.plan.search`);
- **tightens**: the same metric with its tolerance scaled, every other field kept, so a search
  aiming below the gate still judges each output by the gate its user chose.

Metrics are registered by gate name (:data:`fp16guard.verify.metrics.METRICS`), the way plan
rules are; :func:`fp16guard.verify.metrics.metric_for` builds the one an output's
:class:`~fp16guard.settings.OutputGate` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

__all__ = ["Accumulator", "MergeableAccumulator", "Failure", "Metric", "NONFINITE_SEVERITY", "ERROR_SEVERITY", "nonfinite_failure"]

#: Severities order the failures of a report: the most severe gives the verdict's first line.
ERROR_SEVERITY = 4e9  # the output could not be compared at all
NONFINITE_SEVERITY = 3e9  # NaN/inf in the candidate
EXACT_SEVERITY = 2e9  # integer/boolean outputs that differ
RATIO_SEVERITY = 1e9  # a figure past its tolerance (+ how far)


@dataclass(frozen=True)
class Failure:
    """One reason an output failed its gate.

    Attributes:
        severity: orders failures; the largest is the verdict's first line.
        message: one line naming the output, the figure and the tolerance.
    """

    severity: float
    message: str


@runtime_checkable
class Accumulator(Protocol):
    """Running state of one output for one metric; O(1) memory in the number of samples."""

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """Add one slice of FP32 outputs ``ref`` and candidate outputs ``cand`` (same shape)."""

    def figures(self) -> dict[str, Any]:
        """The accumulated figures (merged into the output's ``checks``)."""


@runtime_checkable
class MergeableAccumulator(Accumulator, Protocol):
    """An :class:`Accumulator` whose state for later samples can be added to it.

    Verification accumulates each holdout shard on its own and merges the shards in order, so
    holdout shards can be compared on several workers and still give one pass's figures
    (:func:`fp16guard.verify.compare.merge_comparisons`). A custom metric's accumulator without
    ``merge`` still works: it is fed every slice in order in one process, and the holdout is then
    not split over workers.
    """

    def merge(self, other: "MergeableAccumulator") -> None:
        """Add ``other`` (a fresh accumulator of the same metric that saw the samples after
        this one's) to this one, in place. Sums should be added once, so that merging per-shard
        accumulators in shard order gives the same floats whatever the grouping."""


@runtime_checkable
class Metric(Protocol):
    """What a gate is (see the module docstring).

    Attributes:
        name: the gate's name in settings and on the CLI (``numeric``, ``top1`` ...).
    """

    name: str

    def accumulator(self) -> Accumulator | None:
        """A fresh accumulator for what the built-in figures do not hold (None: nothing)."""

    def judge(self, output: str, fig: Mapping[str, Any]) -> list[Failure]:
        """Failures of output ``output`` whose figures are ``fig`` (empty: passed)."""

    def score(self, fig: Mapping[str, Any]) -> float:
        """Failure ratio: ``<= 1`` passes this metric's tolerance, ``inf`` for NaN/inf."""

    def tightened(self, factor: float) -> "Metric":
        """The same metric with its tolerance times ``factor`` (0 < factor <= 1), every other
        field kept."""


def nonfinite_failure(output: str, fig: Mapping[str, Any]) -> Failure | None:
    """The failure every metric shares: NaN/inf in the candidate (None when there is none)."""
    bad = int(fig.get("nonfinite") or 0)
    if not bad:
        return None
    return Failure(NONFINITE_SEVERITY + bad, f"output '{output}': {bad} of {fig.get('elements')} candidate values are NaN/inf (FP32 max |x| {fig.get('ref_max_abs') or 0:.4g})")
