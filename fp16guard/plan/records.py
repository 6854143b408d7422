"""Typed records of ``plan.json``: the plan, its FP32 entries, forced-FP16 entries, repair history.

:meth:`Plan.from_dict` is the one place a ``plan.json`` is validated; :meth:`Plan.to_dict` the one
place it is written. The entries also read like the dicts they serialise to (``entry["name"]``),
so code written against ``plan.json`` keeps working on typed plans.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from fp16guard.errors import ConfigError

__all__ = ["PlanEntry", "ForcedFP16", "RepairStep", "RepairRecord", "Plan"]


class _Record(Mapping):
    """Read-only dict view of a dataclass record (its ``to_dict()``)."""

    def to_dict(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def _opt_float(value: Any) -> float | None:
    """A number as written, or None (absent, null, or the strict-JSON "inf" of a non-finite one)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None


def _strs(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"plan field {what} is {value!r}; expected a list of strings")
    return list(value)


@dataclass(frozen=True, eq=False)
class PlanEntry(_Record):
    """One node that stays FP32.

    Attributes:
        name: node name.
        op_type: op type.
        inputs: the node's input tensor names (subgraph reads included).
        outputs: the node's output tensor names.
        reason: the primary reason code (first in priority order).
        reasons: every reason code that applied, in priority order.
        details: one sentence per finding.
        triggers: the tensors that made a rule fire (inputs, outputs or initializers), in order.
    """

    name: str
    op_type: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    reason: str = ""
    reasons: tuple[str, ...] = ()
    details: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "reason": self.reason,
            "reasons": list(self.reasons),
            "details": list(self.details),
            "triggers": list(self.triggers),
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, data: Any) -> "PlanEntry":
        """Validate one ``fp32_nodes`` entry (older plans without inputs/reasons/triggers load too).

        Raises:
            ConfigError: not an object, no string ``name``, or a field of the wrong type.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ConfigError(f"plan entry {data!r} has no 'name'; expected {{'name', 'op_type', 'outputs', 'reason', 'details'}}")
        reason = data.get("reason") or ""
        if not isinstance(reason, str):
            raise ConfigError(f"plan entry {data['name']!r} has reason {reason!r}; expected a string")
        details = data.get("details") or []
        return cls(
            name=data["name"],
            op_type=str(data.get("op_type") or ""),
            inputs=tuple(_strs(data.get("inputs"), "inputs")),
            outputs=tuple(_strs(data.get("outputs"), "outputs")),
            reason=reason,
            reasons=tuple(_strs(data.get("reasons"), "reasons") or ([reason] if reason else [])),
            details=tuple(str(d) for d in (details if isinstance(details, (list, tuple)) else [details])),
            triggers=tuple(_strs(data.get("triggers"), "triggers")),
        )


@dataclass(frozen=True, eq=False)
class ForcedFP16(_Record):
    """A node matched by ``force_fp16_nodes``.

    Attributes:
        name: node name.
        op_type: op type.
        applied: False when a structural rule kept it FP32 anyway.
        overridden: the rule codes the override set aside.
        details: the sentences of those rules.
    """

    name: str
    op_type: str = ""
    applied: bool = True
    overridden: tuple[str, ...] = ()
    details: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "applied": self.applied, "overridden": list(self.overridden), "details": list(self.details)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, data: Any) -> "ForcedFP16":
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ConfigError(f"plan forced_fp16 entry {data!r} has no 'name'; expected {{'name', 'op_type', 'applied', 'overridden', 'details'}}")
        return cls(
            name=data["name"],
            op_type=str(data.get("op_type") or ""),
            applied=bool(data.get("applied", True)),
            overridden=tuple(_strs(data.get("overridden"), "overridden")),
            details=tuple(str(d) for d in data.get("details") or []),
        )


@dataclass(frozen=True)
class RepairStep:
    """One iteration of automatic repair (see :mod:`fp16guard.plan.repair`).

    Attributes:
        iteration: 0 for the check of the rule-based plan, then 1, 2, ...
        fp32_nodes: size of the FP32 set that was checked in this iteration.
        passed: whether that candidate passed the numeric gate on the calibration slice.
        worst_rel_error: worst per-output relative error of that candidate (None: non-finite).
        nonfinite: non-finite output elements of that candidate.
        reason: the gate's verdict sentence.
        seconds: wall time of the iteration.
        added: nodes pinned to FP32 after this check: ``{"name", "op_type", "local_error",
            "why"}`` each.
        phase: what the check was for (:mod:`fp16guard.plan.search`): ``all_fp16`` (only the
            nodes that cannot be FP16 or must not be: structural, forced, out of range),
            ``rules`` (the rule-based plan), ``grow`` (after pinning by attribution), ``shrink``
            (with ``removed`` given back to FP16), or ``check`` (older plans).
        removed: nodes this check gave back to FP16 (shrink); kept FP16 only when ``accepted``.
        score: worst failure ratio under the user's gate (``<= 1`` passes; None: non-finite).
        inflation: the statistical margin of this candidate (score x inflation <= 1 accepts it).
        accepted: passed with that margin (what grow and shrink steps are judged by).
        fp32_flops_share: share of the estimated FLOPs this FP32 set keeps in FP32 (0..1).
    """

    iteration: int
    fp32_nodes: int
    passed: bool
    worst_rel_error: float | None
    nonfinite: int
    reason: str
    seconds: float
    added: tuple[dict, ...] = ()
    phase: str = "check"
    removed: tuple[str, ...] = ()
    score: float | None = None
    inflation: float | None = None
    accepted: bool | None = None
    fp32_flops_share: float | None = None

    def to_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "fp32_nodes": self.fp32_nodes,
            "passed": self.passed,
            "worst_rel_error": self.worst_rel_error,
            "nonfinite": self.nonfinite,
            "reason": self.reason,
            "seconds": self.seconds,
            "added": [dict(a) for a in self.added],
            "phase": self.phase,
            "removed": list(self.removed),
            "score": self.score,
            "inflation": self.inflation,
            "accepted": self.accepted,
            "fp32_flops_share": self.fp32_flops_share,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "RepairStep":
        if not isinstance(data, Mapping):
            raise ConfigError(f"plan repair step {data!r} is not an object")
        try:
            return cls(
                iteration=int(data["iteration"]),
                fp32_nodes=int(data["fp32_nodes"]),
                passed=bool(data["passed"]),
                worst_rel_error=None if data.get("worst_rel_error") is None else float(data["worst_rel_error"]),
                nonfinite=int(data.get("nonfinite") or 0),
                reason=str(data.get("reason") or ""),
                seconds=float(data.get("seconds") or 0.0),
                added=tuple(dict(a) for a in data.get("added") or []),
                phase=str(data.get("phase") or "check"),
                removed=tuple(_strs(data.get("removed"), "removed")),
                score=_opt_float(data.get("score")),
                inflation=_opt_float(data.get("inflation")),
                accepted=None if data.get("accepted") is None else bool(data["accepted"]),
                fp32_flops_share=_opt_float(data.get("fp32_flops_share")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"plan repair step {data!r} is malformed ({exc}); expected iteration, fp32_nodes, passed") from None


@dataclass(frozen=True)
class RepairRecord:
    """What automatic repair did to the rule-based plan.

    Attributes:
        outcome: ``unchanged`` (the rule-based plan already passed and nothing could go back
            to FP16), ``all_fp16`` (the all-FP16 build passed: only nodes that cannot or must not
            be FP16 stay FP32), ``shrunk`` (the rule-based plan passed and the shrink phase gave
            nodes back to FP16), ``repaired`` (passes after pinning more nodes, then shrinking),
            ``budget_spent`` (still failing when the iteration or time budget
            ran out), ``fp32_fails`` (even the all-FP32 build fails the gate: nothing to repair),
            ``stuck`` (the remaining error traces to no node left in FP16), or ``skipped`` (repair
            off, no calibration data, or a model of 2 GB or more).
        message: one sentence for people.
        samples: calibration samples used for the checks.
        seconds: total wall time of repair.
        steps: every iteration, in order.
        checks: candidates built and checked (memoised repeats not counted).
        returned: nodes the shrink phase gave back to FP16 (rule-pinned or grown).
        stability: how the final plan's error varies across calibration subsets:
            ``{"inflation", "slices", "method", "score", "bound"}`` (see
            :mod:`fp16guard.plan.search.margin`); None when no check ran.
        fp32_flops_share: share of the estimated FLOPs the final set keeps in FP32 (None:
            unknown).
        parallel: checks that could run at once (``PlanSettings.repair_parallel``; 1: one
            after the other). The steps, ``checks`` and the FP32 set do not depend on it.
        speculative: checks run ahead of need that the search never used (the next chunk of a
            bisection whose first chunk was accepted, ...): the cost of the parallelism, not steps.
            0 when ``parallel`` is 1. Depends on timing.
    """

    outcome: str
    message: str
    samples: int = 0
    seconds: float = 0.0
    steps: tuple[RepairStep, ...] = ()
    checks: int = 0
    returned: tuple[str, ...] = ()
    stability: dict | None = None
    fp32_flops_share: float | None = None
    parallel: int = 1
    speculative: int = 0

    def to_dict(self) -> dict:
        return {
            "outcome": self.outcome, "message": self.message, "samples": self.samples, "seconds": self.seconds,
            "steps": [s.to_dict() for s in self.steps], "checks": self.checks, "returned": list(self.returned),
            "stability": None if self.stability is None else dict(self.stability), "fp32_flops_share": self.fp32_flops_share,
            "parallel": self.parallel, "speculative": self.speculative,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "RepairRecord":
        if not isinstance(data, Mapping) or not isinstance(data.get("outcome"), str):
            raise ConfigError(f"plan repair record {data!r} has no 'outcome'; expected {{'outcome', 'message', 'steps'}}")
        return cls(
            outcome=data["outcome"],
            message=str(data.get("message") or ""),
            samples=int(data.get("samples") or 0),
            seconds=float(data.get("seconds") or 0.0),
            steps=tuple(RepairStep.from_dict(s) for s in data.get("steps") or []),
            checks=int(data.get("checks") or 0),
            returned=tuple(_strs(data.get("returned"), "returned")),
            stability=dict(data["stability"]) if isinstance(data.get("stability"), Mapping) else None,
            fp32_flops_share=_opt_float(data.get("fp32_flops_share")),
            parallel=int(data.get("parallel") or 1),
            speculative=int(data.get("speculative") or 0),
        )


_PLAN_KEYS = frozenset({"threshold", "fp32_nodes", "forced_fp16", "counts", "repair"})


@dataclass
class Plan:
    """Which nodes stay FP32, and why.

    Attributes:
        threshold: the max |x| above which a tensor counts as out of range.
        fp32_nodes: one :class:`PlanEntry` per FP32 node, in graph order (each also reads as
            the ``plan.json`` dict: ``name``, ``op_type``, ``inputs``, ``outputs``, ``reason``,
            ``reasons``, ``details``, ``triggers``).
        forced_fp16: one :class:`ForcedFP16` per node matched by ``force_fp16_nodes``.
        counts: ``nodes`` (main graph), ``fp32``, ``fp16``, ``neutral``.
        repair: what automatic repair did (None: repair did not run; absent from ``plan.json``).
        extra: top-level ``plan.json`` keys written by plan strategies (e.g. ``strategy``,
            ``folding``), kept as they are through :meth:`from_dict` and :meth:`to_dict`.
    """

    threshold: float
    fp32_nodes: list[PlanEntry] = field(default_factory=list)
    forced_fp16: list[ForcedFP16] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    repair: RepairRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fp32_names(self) -> set[str]:
        """Names of the nodes that stay FP32 (what :func:`fp16guard.graph.convert.to_mixed_precision` takes)."""
        return {entry.name for entry in self.fp32_nodes}

    def to_dict(self) -> dict:
        """The ``plan.json`` content (JSON-serialisable, deterministic order)."""
        data = {
            "threshold": self.threshold,
            "fp32_nodes": [e.to_dict() for e in self.fp32_nodes],
            "forced_fp16": [e.to_dict() for e in self.forced_fp16],
            "counts": dict(self.counts),
        }
        data.update({k: v for k, v in self.extra.items() if k not in data and k != "repair"})
        if self.repair is not None:
            data["repair"] = self.repair.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Plan":
        """Rebuild and validate a plan from :meth:`to_dict` output (e.g. a loaded ``plan.json``).

        Raises:
            ConfigError: ``data`` lacks ``threshold`` or ``fp32_nodes``, or an entry is malformed.
        """
        if not isinstance(data, Mapping) or "threshold" not in data or not isinstance(data.get("fp32_nodes"), list):
            raise ConfigError(f"plan has keys {sorted(data) if isinstance(data, Mapping) else type(data).__name__}; expected an object with 'threshold' and a list 'fp32_nodes'")
        try:
            threshold = float(data["threshold"])
        except (TypeError, ValueError):
            raise ConfigError(f"plan threshold {data['threshold']!r} is not a number") from None
        counts = data.get("counts") or {}
        if not isinstance(counts, Mapping):
            raise ConfigError(f"plan counts {counts!r} is not an object")
        return cls(
            threshold=threshold,
            fp32_nodes=[PlanEntry.from_dict(e) for e in data["fp32_nodes"]],
            forced_fp16=[ForcedFP16.from_dict(e) for e in data.get("forced_fp16") or []],
            counts={str(k): int(v) for k, v in counts.items()},
            repair=RepairRecord.from_dict(data["repair"]) if data.get("repair") is not None else None,
            extra={k: v for k, v in data.items() if k not in _PLAN_KEYS},
        )
