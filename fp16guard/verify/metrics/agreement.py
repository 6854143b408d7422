"""Task gates: what a classifier, a CTC head or a detection map needs to get right.

The figures come from :class:`fp16guard.verify.task_checks.TaskChecks`, accumulated for every
float output: ``top1`` (the candidate's arg-max over the last axis equals FP32's at a share of
positions), ``topk`` (FP32's top class is among the candidate's ``k`` highest), ``threshold``
(elements on the same side of a cut as FP32) and ``iou`` (|FP32 on ∩ candidate on| / |FP32 on ∪
candidate on| of the map cut at a threshold: detection and segmentation masks). NaN/inf in the
candidate always fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from fp16guard.verify.metrics.base import ERROR_SEVERITY, RATIO_SEVERITY, Failure, nonfinite_failure

__all__ = ["AgreementMetric", "FIGURE"]

#: The figure of ``checks`` each agreement gate compares with its ``min_agreement``.
FIGURE = {"top1": "top1_agreement", "topk": "topk_agreement", "threshold": "threshold_agreement", "iou": "threshold_iou"}
_NEEDS_CLASS_AXIS = frozenset({"top1", "topk"})


@dataclass(frozen=True)
class AgreementMetric:
    """A share of positions (or elements) that must agree with FP32.

    Attributes:
        name: ``top1``, ``topk``, ``threshold`` or ``iou`` (:data:`FIGURE`).
        min_agreement: smallest share that must agree (default 1.0: every position).
        k: classes ``topk`` looks at.
        threshold: the cut of ``threshold`` and ``iou`` (``value > threshold`` is on).
    """

    name: str = "top1"
    min_agreement: float = 1.0
    k: int = 5
    threshold: float = 0.5

    def accumulator(self) -> None:
        """None: :class:`~fp16guard.verify.task_checks.TaskChecks` counts for every float output."""
        return None

    def value(self, fig: Mapping[str, Any]) -> float | None:
        """The agreement this metric judges (None when the output has no such figure)."""
        return (fig.get("checks") or {}).get(FIGURE[self.name])

    def describe(self, fig: Mapping[str, Any]) -> str:
        """What agrees, in words (for verdicts and gate suggestions)."""
        checks = fig.get("checks") or {}
        return {
            "top1": "top-1 class agrees with FP32",
            "topk": f"FP32's top class is in the candidate's top {checks.get('k', self.k)}",
            "threshold": f"elements on the same side of {self.threshold:g} as FP32",
            "iou": f"IoU of the map cut at {self.threshold:g} with FP32's",
        }[self.name]

    def judge(self, output: str, fig: Mapping[str, Any]) -> list[Failure]:
        if fig.get("kind") != "float":
            return [Failure(ERROR_SEVERITY, f"output '{output}': gate '{self.name}' needs a float output; this one is {fig.get('kind')} ({fig.get('dtype')})")]
        fails = [f for f in [nonfinite_failure(output, fig)] if f]
        value = self.value(fig)
        if value is None:
            return fails + [Failure(ERROR_SEVERITY, f"output '{output}': gate '{self.name}' needs a class axis (rank >= 2, last axis >= 2 classes); this output has none")]
        if value < self.min_agreement:
            unit = "" if self.name == "iou" else " of positions"
            fails.append(Failure(RATIO_SEVERITY + self.score(fig), f"output '{output}': {self.describe(fig)} at {value:.4g}{unit} < {self.min_agreement:g} (gate {self.name})"))
        return fails

    def score(self, fig: Mapping[str, Any]) -> float:
        value = self.value(fig)
        if fig.get("nonfinite") or value is None:
            return math.inf
        if value >= 1.0:
            return 0.0
        if self.min_agreement >= 1.0:
            # Any disagreement fails a gate of 1.0; still ordered, so a search sees progress.
            return 1.0 + (1.0 - value) * 1e6
        return (1.0 - value) / (1.0 - self.min_agreement)

    def tightened(self, factor: float) -> "AgreementMetric":
        return replace(self, min_agreement=1.0 - (1.0 - self.min_agreement) * factor)
