"""The release gate's own conditions: what a verified run must also show to be released.

Verification says the artifact matches FP32; it says nothing about whether FP16 buys anything.
Release automation that trusts the store can ask for more (``ReleaseSettings``): a minimum FP16
share of the estimated FLOPs, and a minimum GPU speed-up over FP32. A run that misses one is
committed as verified but not released; the refusal is one line, recorded in the manifest
(``release_gate``), the run's status reason and the run summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from fp16guard.plan.cost import fmt_share

__all__ = ["GateDecision", "release_gate"]


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer for one run.

    Attributes:
        refused: one line saying why the run may not be released; None when it may.
        notes: conditions that could not be judged (e.g. ``min_speedup`` without a GPU profile),
            one line each.
        min_fp16_share, min_speedup: the settings judged (0 / None: off).
    """

    refused: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    min_fp16_share: float = 0.0
    min_speedup: float | None = None

    @property
    def allowed(self) -> bool:
        """True when nothing refuses the release."""
        return self.refused is None

    def to_dict(self) -> dict:
        """The manifest's ``release_gate`` record."""
        return {"allowed": self.allowed, "refused": self.refused, "notes": list(self.notes),
                "min_fp16_share": self.min_fp16_share, "min_speedup": self.min_speedup}


def release_gate(share: Mapping | None, speed: Mapping | None, min_fp16_share: float = 0.0, min_speedup: float | None = None) -> GateDecision:
    """Judge a verified run against the release settings.

    Args:
        share: the run's FP16 share record (:meth:`fp16guard.plan.cost.FP16Share.to_dict`), None
            when it could not be estimated.
        speed: :func:`fp16guard.report.verdict.speed_verdict` of the run's profile.
        min_fp16_share: smallest FP16 share of the estimated FLOPs, 0..1 (0: off). A run whose
            share is unknown is refused when a minimum is set.
        min_speedup: smallest FP32 / artifact latency ratio at the largest profiled batch (None:
            off). Judged only from a GPU profile; otherwise noted as not judged, never refused.
    """
    reasons: list[str] = []
    notes: list[str] = []
    if min_fp16_share and min_fp16_share > 0:
        value = (share or {}).get("share_flops")
        if value is None:
            reasons.append(f"the FP16 share of FLOPs could not be estimated, and min_fp16_share is {fmt_share(min_fp16_share)}")
        elif value < min_fp16_share:
            reasons.append(f"FP16 runs {fmt_share(value)} of the estimated FLOPs, below min_fp16_share {fmt_share(min_fp16_share)}")
    if min_speedup is not None:
        if speed and speed.get("judged"):
            if float(speed["speedup"]) < min_speedup:
                reasons.append(f"the artifact runs at {float(speed['speedup']):.2f}x FP32 (batch {speed.get('batch')}, {speed.get('device')}), below min_speedup {min_speedup:g}")
        else:
            why = (speed or {}).get("text") or "speed not judged: no GPU profile"
            notes.append(f"min_speedup {min_speedup:g} not judged: {why.removeprefix('speed not judged: ')}")
    refused = ("release refused: " + "; ".join(reasons)) if reasons else None
    return GateDecision(refused, tuple(notes), float(min_fp16_share or 0.0), min_speedup)
