"""The typed outcome of :func:`fp16guard.convert`.

Kept apart from the conversion itself so that reading a result (``str(result)``,
``result.to_dict()``) imports nothing heavier than the plan and verification records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fp16guard.plan.records import Plan
from fp16guard.records.verification import VerificationReport

__all__ = ["Result"]


@dataclass(frozen=True)
class Result:
    """What :func:`fp16guard.convert` made and proved.

    Attributes:
        verified: the artifact matched FP32 on the holdout data within the gate.
        artifact: the artifact's path: ``output`` when it was written, else the candidate in
            ``workdir`` (a rejected candidate is never written to ``output``).
        output: the path written (atomically), None when no ``output`` was asked for or the
            candidate was rejected.
        plan: which nodes stay FP32 and why (``plan.json``'s content, typed).
        verification: the holdout verification (``verification.json``'s content, typed).
        fp16_share: :class:`fp16guard.plan.cost.FP16Share` of the plan (share of the estimated
            FLOPs that runs in FP16), None when the cost model is unavailable.
        speed: one line of measured latency against FP32; None unless a GPU profile with real
            FP16 kernels was made (CPU timings say nothing about FP16 speed).
        profile: the latency record (:func:`fp16guard.backends.profile.profile_artifact`), None
            when not profiled.
        holdout: where the holdout came from: ``"given"`` or ``"holdout split from
            calibration (...)"``.
        independent: False when the holdout overlaps the calibration data (allowed with
            ``allow_overlap=True``); the verdict then says "not independent".
        backend: the backend's build record (``name``, ``implementation``, ``artifact``,
            ``artifact_sha256``, ...).
        workdir: the folder holding ``stats.parquet``, ``plan.json``, ``verification.json`` and
            the candidate.
        seconds: wall time of the conversion, in seconds.
        notes: warnings worth a line each (e.g. why no speed is shown).
    """

    verified: bool
    artifact: Path
    output: Path | None
    plan: Plan
    verification: VerificationReport
    fp16_share: Any = None
    speed: str | None = None
    profile: dict | None = None
    holdout: str = "given"
    independent: bool = True
    backend: dict = field(default_factory=dict)
    workdir: Path | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``"verified"`` or ``"rejected"`` (the words ``fp16guard run`` and ``history`` use)."""
        return "verified" if self.verified else "rejected"

    @property
    def reason(self) -> str | None:
        """Why the artifact was rejected (one line); None when verified."""
        return self.verification.reason

    @property
    def worst_rel_error(self) -> float | None:
        """Largest relative error over the outputs (``inf`` when an output had NaN/inf)."""
        return self.verification.worst_rel_error

    @property
    def fp32_nodes(self) -> list[str]:
        """Names of the nodes kept in FP32, in graph order."""
        return [entry.name for entry in self.plan.fp32_nodes]

    def verdict(self) -> str:
        """One line: ``VERIFIED: ...`` or ``REJECTED: <reason>``, with ``(not independent ...)``
        when the holdout overlapped the calibration data."""
        head = "VERIFIED" if self.verified else "REJECTED"
        text = f"{head}: {self.reason or 'artifact matches FP32 within tolerance'}"
        if not self.independent:
            from fp16guard.preflight import NOT_INDEPENDENT

            text += f" ({NOT_INDEPENDENT})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (serialise with :func:`fp16guard.records.dumps`: an unbounded
        error is the string ``"inf"``). Keys: ``passed``, ``status``, ``reason``, ``artifact``,
        ``output``, ``fp32_nodes``, ``nodes``, ``worst_rel_error``, ``fp16_share``, ``speed``,
        ``holdout``, ``independent``, ``backend``, ``workdir``, ``seconds``, ``notes``, ``plan``,
        ``verification``, ``profile``."""
        share = self.fp16_share.to_dict() if self.fp16_share is not None and hasattr(self.fp16_share, "to_dict") else None
        return {
            "passed": self.verified,
            "status": self.status,
            "reason": self.reason,
            "artifact": str(self.artifact),
            "output": None if self.output is None else str(self.output),
            "fp32_nodes": len(self.plan.fp32_nodes),
            "nodes": self.plan.counts.get("nodes"),
            "worst_rel_error": self.worst_rel_error,
            "fp16_share": share,
            "speed": self.speed,
            "holdout": self.holdout,
            "independent": self.independent,
            "backend": dict(self.backend),
            "workdir": None if self.workdir is None else str(self.workdir),
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "plan": self.plan.to_dict(),
            "verification": self.verification.to_dict(),
            "profile": self.profile,
        }

    def lines(self) -> list[str]:
        """The readable summary, one string per line (what ``str()`` joins)."""
        rows: list[tuple[str, Any]] = []
        if self.output is not None:
            rows.append(("artifact", self.output))
        elif self.verified:
            rows.append(("artifact", f"{self.artifact} (in the work folder; pass output=... to place it)"))
        else:
            rows.append(("artifact", f"{self.artifact} (rejected candidate, kept in the work folder; never written to output)"))
        total = self.plan.counts.get("nodes")
        fp32 = len(self.plan.fp32_nodes)
        rows.append(("fp32 nodes", f"{fp32} of {total}" if total else fp32))
        if self.fp16_share is not None and hasattr(self.fp16_share, "describe"):
            rows.append(("fp16 share", self.fp16_share.describe()))
        strategy = self.plan.extra.get("strategy")
        if isinstance(strategy, dict) and strategy.get("used"):
            why = strategy.get("why")
            rows.append(("strategy", f"{strategy['used']}" + (f" ({why})" if why and why != "requested" else "")))
        if self.plan.repair is not None:
            try:
                from fp16guard.report.plan_summary import repair_line

                rows.append(("repair", (repair_line(self.plan.to_dict()) or "").removeprefix("repair: ") or self.plan.repair.outcome))
            except ImportError:  # the report layer is optional for reading a result
                rows.append(("repair", self.plan.repair.outcome))
        worst = self.worst_rel_error
        gate = self.verification.tolerances.get("max_rel_error")
        if worst is not None:
            text = "non-finite" if not math.isfinite(worst) else f"{worst:.3g}"
            rows.append(("worst relative error", text + (f" (gate {gate:g})" if isinstance(gate, (int, float)) else "")))
        samples = self.verification.samples
        shards = len(self.verification.shards)
        checked = f"{samples} samples in {shards} shard{'s' if shards != 1 else ''}" if samples is not None else f"{shards} shards"
        if self.verification.execution:
            checked += f"; {self.verification.execution}"
        rows.append(("verified on", checked))
        rows.append(("holdout", self.holdout + ("" if self.independent else " — overlaps calibration (not independent)")))
        if self.speed:
            rows.append(("speed", self.speed))
        if self.workdir is not None:
            rows.append(("work folder", self.workdir))
        rows.append(("took", f"{self.seconds:.1f} s"))
        out = [self.verdict()]
        out += [f"  {label + ':':22s}{value}" for label, value in rows]
        out += [f"  note: {note}" for note in self.notes]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())
