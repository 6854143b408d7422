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
(:class:`fp16guard.settings.OutputGate`): ``top1``, ``topk`` or ``threshold`` then pass when the
chosen agreement reaches ``min_agreement`` (default 1.0, every position) and the candidate holds
no NaN/inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fp16guard.settings import OutputGate, VerifySettings

__all__ = ["TaskChecks", "check_gate_outputs", "gate_figure", "judge_task_gate"]

#: The figure each non-numeric gate compares with ``min_agreement``.
_GATE_FIGURE = {"top1": "top1_agreement", "topk": "topk_agreement", "threshold": "threshold_agreement"}


def gate_figure(gate: OutputGate) -> str | None:
    """Name of the agreement figure a gate judges (None for the numeric gate)."""
    return _GATE_FIGURE.get(gate.gate)


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


def judge_task_gate(name: str, fig: dict, gate: OutputGate) -> list[tuple[float, str]]:
    """Failures of an output judged by a non-numeric gate, as (severity, one-line message).

    NaN/inf in the candidate always fails (severity as the numeric gate gives it); the chosen
    agreement must reach ``gate.min_agreement``. An output the gate cannot apply to (no class
    axis for ``top1``/``topk``; not a float output) fails with a message saying so.
    """
    fails: list[tuple[float, str]] = []
    if fig.get("kind") != "float":
        return [(4e9, f"output '{name}': gate '{gate.gate}' needs a float output; this one is {fig.get('kind')} ({fig.get('dtype')})")]
    if fig.get("nonfinite"):
        fails.append((3e9 + fig["nonfinite"], f"output '{name}': {fig['nonfinite']} of {fig['elements']} candidate values are NaN/inf (FP32 max |x| {fig.get('ref_max_abs') or 0:.4g})"))
    key = _GATE_FIGURE[gate.gate]
    value = (fig.get("checks") or {}).get(key)
    if value is None:
        return fails + [(4e9, f"output '{name}': gate '{gate.gate}' needs a class axis (rank >= 2, last axis >= 2 classes); this output has none")]
    if value < gate.min_agreement:
        what = {"top1": "top-1 class agrees with FP32", "topk": f"FP32's top class is in the candidate's top {fig['checks'].get('k')}", "threshold": f"elements on the same side of {gate.threshold:g} as FP32"}[gate.gate]
        fails.append((1e9 + (1 - value) / max(1e-12, 1 - gate.min_agreement + 1e-12), f"output '{name}': {what} at {value:.4g} of positions < {gate.min_agreement:g} (gate {gate.gate})"))
    return fails


def check_gate_outputs(settings: VerifySettings, output_names: list[str]) -> None:
    """Raise when ``settings.output_gates`` names an output the model does not have.

    Raises:
        ConfigError: names the unknown outputs and lists the model's (exit status 2).
    """
    from fp16guard.errors import ConfigError

    unknown = sorted(set(settings.output_gates) - set(output_names))
    if unknown:
        raise ConfigError(
            f"a gate names output(s) {', '.join(map(repr, unknown))}, which the model does not have; expected one of {', '.join(map(repr, output_names))}"
        )
