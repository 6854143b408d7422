"""The numeric gate (the default): max relative error and cosine against FP32; exact outputs by
their mismatch fraction."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from fp16guard.verify.metrics.base import EXACT_SEVERITY, RATIO_SEVERITY, Failure, nonfinite_failure

__all__ = ["NumericMetric"]


@dataclass(frozen=True)
class NumericMetric:
    """``max_rel_error`` (max|cand - fp32| / max|fp32| over all samples) and cosine similarity.

    Attributes:
        max_rel_error: largest allowed relative error (default 0.02).
        min_cosine: smallest allowed cosine similarity (default 0.999).
        max_mismatch_fraction: integer/boolean outputs: largest fraction of elements that may
            differ (default 0).
    """

    max_rel_error: float = 0.02
    min_cosine: float = 0.999
    max_mismatch_fraction: float = 0.0
    name: str = "numeric"

    def accumulator(self) -> None:
        """None: the numeric figures are accumulated for every output by the comparison."""
        return None

    def judge(self, output: str, fig: Mapping[str, Any]) -> list[Failure]:
        if fig.get("kind") == "exact":
            frac = fig["mismatch_fraction"]
            if frac > self.max_mismatch_fraction:
                return [Failure(EXACT_SEVERITY + frac, f"output '{output}': {fig['mismatches']} of {fig['elements']} elements differ from FP32 (fraction {frac:.4g} > {self.max_mismatch_fraction:g})")]
            return []
        fails = [f for f in [nonfinite_failure(output, fig)] if f]
        rel = fig.get("max_rel_error")
        if rel is None or rel > self.max_rel_error:
            shown = "inf" if rel is None else f"{rel:.4g}"
            ratio = 1e9 if rel is None else rel / self.max_rel_error
            abs_err = "inf" if fig.get("max_abs_error") is None else f"{fig['max_abs_error']:.4g}"
            fails.append(Failure(RATIO_SEVERITY + ratio, f"output '{output}': max relative error {shown} > {self.max_rel_error:g} (max abs error {abs_err}, FP32 max |x| {fig.get('ref_max_abs') or 0:.4g})"))
        cos = fig.get("cosine")
        if cos is not None and cos < self.min_cosine:
            fails.append(Failure(RATIO_SEVERITY + (1 - cos) / max(1e-12, 1 - self.min_cosine), f"output '{output}': cosine similarity {cos:.6g} < {self.min_cosine:g}"))
        return fails

    def score(self, fig: Mapping[str, Any]) -> float:
        if fig.get("kind") == "exact":
            frac = float(fig.get("mismatch_fraction") or 0.0)
            return 0.0 if frac == 0 else (frac / self.max_mismatch_fraction if self.max_mismatch_fraction > 0 else math.inf)
        rel = fig.get("max_rel_error")
        if fig.get("nonfinite") or rel is None:
            return math.inf
        cos = fig.get("cosine")
        cos_ratio = 0.0 if cos is None else (1.0 - cos) / max(1e-12, 1.0 - self.min_cosine)
        return max(rel / self.max_rel_error, cos_ratio)

    def tightened(self, factor: float) -> "NumericMetric":
        return replace(
            self,
            max_rel_error=self.max_rel_error * factor,
            min_cosine=1.0 - (1.0 - self.min_cosine) * factor,
            max_mismatch_fraction=self.max_mismatch_fraction * factor,
        )
