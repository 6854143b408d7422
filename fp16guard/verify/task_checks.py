"""Checks that match what an output is used for, beside the numeric figures.

A numeric gate (max relative error, cosine) can reject a build that gives every user the same
answer: an OCR recogniser's FP16 softmax was 0.22 off FP32 yet picked the same character at all
303 positions (issue 8). So every float output also gets, always reported:

- **class agreement**, for outputs with a class axis (rank >= 2, the last axis holds >= 2
  scores): ``top1_agreement``, the fraction of positions (every index of the leading axes)
  where the candidate's arg-max class equals FP32's; ``topk_agreement``, the fraction where
  FP32's top class is among the candidate's ``k`` highest scores (``k`` capped at the class
  count);
- **thresholded-map agreement**, for any float output (detection and segmentation maps are read
  as ``value > threshold``): ``threshold_agreement``, the fraction of elements on the same side
  of the threshold, and ``threshold_iou``, |FP32 above ∩ candidate above| / |FP32 above ∪
  candidate above| (1.0 when neither is ever above).

A candidate value that is NaN/inf never agrees. Accumulators hold counts only (O(1) memory in
the number of samples), like the numeric ones in :mod:`fp16guard.verify.compare`.

The gate of an output is numeric unless the user chose another
(:class:`fp16guard.settings.OutputGate`); the gates that judge these counts are in
:mod:`fp16guard.verify.metrics.agreement`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fp16guard.settings import OutputGate, VerifySettings

if TYPE_CHECKING:
    from fp16guard.verify.metrics import Gate

__all__ = ["TaskChecks", "check_gate_outputs"]

@dataclass
class TaskChecks:
    """Running agreement counts of one float output; O(1) memory.

    Args:
        k: classes the top-k check looks at (capped at the class count).
        threshold: the value a map is cut at (``value > threshold`` is "on").
    """

    k: int = 5
    threshold: float = 0.5
    rows: int = 0
    classes: int | None = None
    top1_agree: int = 0
    topk_agree: int = 0
    elements: int = 0
    same_side: int = 0
    both_on: int = 0
    either_on: int = 0
    has_class_axis: bool = True

    @classmethod
    def for_gate(cls, gate: OutputGate | None) -> "TaskChecks":
        """Accumulator with the gate's ``k`` and ``threshold`` (the defaults without a gate)."""
        gate = gate or OutputGate()
        return cls(k=gate.k, threshold=gate.threshold)

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """Add one slice of FP32 outputs ``ref`` and candidate outputs ``cand`` (same shape)."""
        r = np.asarray(ref)
        c = np.asarray(cand)
        finite = np.isfinite(c)
        r_on = r > self.threshold
        c_on = (c > self.threshold) & finite
        self.elements += r.size
        self.same_side += int(np.count_nonzero((r_on == c_on) & finite))
        self.both_on += int(np.count_nonzero(r_on & c_on))
        self.either_on += int(np.count_nonzero(r_on | c_on))
        if r.ndim < 2 or r.shape[-1] < 2:
            self.has_class_axis = False
        if not self.has_class_axis or r.size == 0:
            return
        classes = r.shape[-1]
        self.classes = classes
        r2 = r.reshape(-1, classes)
        c2 = np.where(finite, c, -np.inf).reshape(-1, classes)  # a NaN score is never the top
        row_ok = finite.reshape(-1, classes).all(axis=1)
        ref_top = r2.argmax(axis=1)
        cand_top = c2.argmax(axis=1)
        self.rows += r2.shape[0]
        self.top1_agree += int(np.count_nonzero((ref_top == cand_top) & row_ok))
        k = min(self.k, classes)
        if k >= classes:
            in_topk = np.ones(r2.shape[0], dtype=bool)
        else:
            # The candidate's score of FP32's top class is in its top k when fewer than k
            # classes score strictly higher.
            own = c2[np.arange(r2.shape[0]), ref_top]
            in_topk = np.count_nonzero(c2 > own[:, None], axis=1) < k
        self.topk_agree += int(np.count_nonzero(in_topk & row_ok))

    def merge(self, other: "TaskChecks") -> None:
        """Add ``other``'s counts (later samples of the same output) to these, in place; exact,
        so per-shard checks merged in any grouping give one pass's figures."""
        self.rows += other.rows
        self.classes = other.classes if other.classes is not None else self.classes
        self.top1_agree += other.top1_agree
        self.topk_agree += other.topk_agree
        self.elements += other.elements
        self.same_side += other.same_side
        self.both_on += other.both_on
        self.either_on += other.either_on
        self.has_class_axis = self.has_class_axis and other.has_class_axis

    def figures(self) -> dict:
        """``{"threshold", "threshold_agreement", "threshold_iou"}`` plus, for outputs with a
        class axis, ``{"classes", "positions", "k", "top1_agreement", "topk_agreement"}``."""
        out: dict = {
            "threshold": self.threshold,
            "threshold_agreement": self.same_side / self.elements if self.elements else 1.0,
            "threshold_iou": self.both_on / self.either_on if self.either_on else 1.0,
        }
        if self.has_class_axis and self.rows:
            out.update(
                classes=self.classes,
                positions=self.rows,
                k=min(self.k, self.classes or self.k),
                top1_agreement=self.top1_agree / self.rows,
                topk_agreement=self.topk_agree / self.rows,
            )
        return out


def check_gate_outputs(settings: "VerifySettings | Gate", output_names: list[str]) -> None:
    """Raise when ``settings.output_gates`` names an output the model does not have, or a gate
    that cannot be built (a custom metric that does not import): before any work is done.

    Args:
        settings: :class:`VerifySettings`, or a :class:`fp16guard.verify.metrics.Gate` already
            built from them (not built again).

    Raises:
        ConfigError: names the unknown outputs and lists the model's, or the gate (exit status 2).
    """
    from fp16guard.errors import ConfigError
    from fp16guard.verify.metrics import Gate

    gates = Gate.from_settings(settings).settings.output_gates
    unknown = sorted(set(gates) - set(output_names))
    if unknown:
        raise ConfigError(
            f"a gate names output(s) {', '.join(map(repr, unknown))}, which the model does not have; expected one of {', '.join(map(repr, output_names))}"
        )
