"""The verification report (``verification.json``) as typed records, and the one definition of
the worst relative error.

A report is produced by :func:`fp16guard.verify.compare.verify` as a dict (the form Prefect
caches and the flow passes between tasks); every reader turns it into a
:class:`VerificationReport` with :meth:`VerificationReport.from_dict` rather than picking keys
by hand, so ``run --json``, ``verification.json``, ``report.html``, ``history`` and the UI
summary show the same figures.

Non-finite candidates: a float output whose candidate holds any NaN/inf has no bounded error.
Its ``max_abs_error``, ``max_rel_error`` and ``cosine`` are None (JSON ``null``), and
:func:`worst_rel_error` of the report is ``inf`` (JSON ``"inf"``, see
:mod:`fp16guard.records.serialize`). Reports written before this rule (an all-NaN output once
read ``max_rel_error: 0.0``) are corrected as they are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from fp16guard.records.serialize import read_float

__all__ = ["OutputFigures", "VerificationReport", "worst_rel_error"]

#: Keys written for every output of a kind (None included), in this order.
_KIND_KEYS = {
    "float": ("kind", "dtype", "elements", "nonfinite", "max_abs_error", "max_rel_error", "cosine", "ref_max_abs", "candidate_max_abs"),
    "exact": ("kind", "dtype", "elements", "mismatches", "mismatch_fraction"),
}
_FLOAT_FIELDS = ("max_abs_error", "max_rel_error", "cosine", "ref_max_abs", "candidate_max_abs", "mismatch_fraction")
_INT_FIELDS = ("elements", "nonfinite", "mismatches")


@dataclass
class OutputFigures:
    """What verification measured for one model output.

    Attributes:
        kind: ``"float"`` (compared numerically), ``"exact"`` (integer/boolean, compared
            element by element) or ``"unknown"`` (not compared: see ``error``).
        dtype: the candidate's element type, e.g. ``"float32"``.
        elements: values compared, over all holdout samples.
        nonfinite: candidate values that are NaN or inf (float outputs).
        max_abs_error: max |candidate - fp32|; None when the candidate holds NaN/inf.
        max_rel_error: ``max_abs_error / ref_max_abs``; None when unbounded or undefined
            (candidate NaN/inf, or a non-zero error against an all-zero FP32 output).
        cosine: cosine similarity of the flattened outputs; None when the candidate holds NaN/inf.
        ref_max_abs: max |fp32| of this output.
        candidate_max_abs: max |candidate| over its finite values.
        mismatches, mismatch_fraction: differing elements (exact outputs).
        checks: task-level figures (top-1/top-k agreement, thresholded-map agreement), see
            :mod:`fp16guard.verify.task_checks`; empty when none apply.
        gate: which gate judged this output (``"numeric"`` unless the user chose another).
        passed: the output's verdict; None when not judged.
        error: why the output could not be compared (missing, shape mismatch).
        extra: keys this version does not know, kept as they were.
    """

    kind: str = "unknown"
    dtype: str | None = None
    elements: int = 0
    nonfinite: int = 0
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    cosine: float | None = None
    ref_max_abs: float | None = None
    candidate_max_abs: float | None = None
    mismatches: int | None = None
    mismatch_fraction: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    gate: str | None = None
    passed: bool | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nonfinite:
            # No bounded error exists for a candidate holding NaN/inf; a figure computed over its
            # finite values alone (0.0 for an all-NaN output) would read as perfect.
            self.max_abs_error = self.max_rel_error = self.cosine = None
        for name in ("max_abs_error", "max_rel_error"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                setattr(self, name, None)  # unbounded: no finite figure, never a number

    @property
    def bounded(self) -> bool:
        """True when this float output has a finite relative error (no NaN/inf, no error)."""
        return self.kind == "float" and not self.error and not self.nonfinite and self.max_rel_error is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OutputFigures":
        """Read one output's figures as written by :meth:`to_dict` (or by older runs)."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        for name in known & set(data):
            value = data.pop(name)
            if name in _FLOAT_FIELDS:
                value = read_float(value)
            elif name in _INT_FIELDS:
                value = _read_count(value, None if name == "mismatches" else 0)
            elif name == "checks":
                value = dict(value) if isinstance(value, Mapping) else {}
            elif name == "passed":
                value = None if value is None else bool(value)
            elif name in ("kind", "dtype", "gate", "error"):
                value = None if value is None else str(value)
            kwargs[name] = value
        if kwargs.get("kind") is None:
            kwargs["kind"] = "float" if "max_rel_error" in kwargs or "cosine" in kwargs else ("exact" if "mismatches" in kwargs else "unknown")
        return cls(**kwargs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        """The output's entry of ``verification.json`` (non-finite numbers are left to the
        serialiser; this record holds none in its error figures)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _KIND_KEYS.get(self.kind, ("kind",))}
        for f in fields(self):
            if f.name in out or f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None or (f.name == "checks" and not value) or (f.name in _INT_FIELDS and not value and self.kind not in _KIND_KEYS):
                continue
            out[f.name] = value
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


@dataclass
class VerificationReport:
    """The content of ``verification.json``.

    Attributes:
        passed: every output passed its gate.
        reason: one line naming the worst failing output and figure; None when passed.
        outputs: figures per model output, in the model's output order.
        samples: holdout samples compared.
        shards: names of the holdout shards, in the order run.
        tolerances: the :class:`~fp16guard.settings.VerifySettings` used, as a dict.
        execution: what ran the candidate (provider, emulation), one sentence.
        emulated: the candidate ran through FP16 storage emulation.
        providers: execution providers onnxruntime used.
        extra: keys this version does not know (e.g. ``engine_check``), kept as they were.
    """

    passed: bool = False
    reason: str | None = None
    outputs: dict[str, OutputFigures] = field(default_factory=dict)
    samples: int | None = None
    shards: list[str] = field(default_factory=list)
    tolerances: dict[str, Any] = field(default_factory=dict)
    execution: str | None = None
    emulated: bool | None = None
    providers: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_rel_error(self) -> float | None:
        """See :func:`worst_rel_error`."""
        return worst_rel_error(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "VerificationReport" | None) -> "VerificationReport":
        """Read a report as written by :meth:`to_dict` (or by older runs); tolerant of missing
        keys (an empty dict gives a report with no outputs that did not pass)."""
        if isinstance(data, VerificationReport):
            return data
        data = dict(data or {})
        raw_outputs = data.pop("outputs", None) or {}
        outputs = {str(k): OutputFigures.from_dict(v if isinstance(v, Mapping) else {}) for k, v in raw_outputs.items()} if isinstance(raw_outputs, Mapping) else {}
        samples = data.pop("samples", None)
        return cls(
            passed=bool(data.pop("passed", False)),
            reason=data.pop("reason", None) or None,
            outputs=outputs,
            samples=int(samples) if isinstance(samples, (int, float)) and not isinstance(samples, bool) else None,
            shards=[str(s) for s in data.pop("shards", None) or []],
            tolerances=dict(data.pop("tolerances", None) or {}),
            execution=data.pop("execution", None),
            emulated=data.pop("emulated", None),
            providers=data.pop("providers", None),
            extra=data,
        )

    def to_dict(self) -> dict[str, Any]:
        """The content of ``verification.json`` as a dict (serialise with
        :func:`fp16guard.records.serialize.dumps`)."""
        out: dict[str, Any] = {
            "passed": self.passed,
            "reason": self.reason,
            "outputs": {name: fig.to_dict() for name, fig in self.outputs.items()},
            "samples": self.samples,
            "shards": list(self.shards),
            "tolerances": dict(self.tolerances),
        }
        for name in ("execution", "emulated", "providers"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def _read_count(value: Any, default: int | None) -> int | None:
    """A count as written (an int, or a float from an older writer); ``default`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return int(value)


def worst_rel_error(report: Mapping[str, Any] | VerificationReport | None) -> float | None:
    """The worst relative error of a verification report: the one definition every view uses.

    - the largest ``max_rel_error`` over the float outputs;
    - ``inf`` when any output has no bounded error: its candidate holds NaN/inf, its error is
      unbounded, or it could not be compared at all (missing, wrong shape);
    - None when the report has no float output figures (no outputs, only integer/boolean ones,
      or verification never ran, e.g. an engine rejected before it).

    Integer and boolean outputs are judged by their mismatch fraction, not here.

    Args:
        report: a :class:`VerificationReport` or its dict (``verification.json``).
    """
    rec = VerificationReport.from_dict(report)
    worst: float | None = None
    for fig in rec.outputs.values():
        if fig.kind == "exact" and not fig.error:
            continue
        value = fig.max_rel_error if fig.bounded else math.inf
        if worst is None or value > worst:
            worst = value
    return worst
