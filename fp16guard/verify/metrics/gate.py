"""A :class:`Gate`: the metric of every output of a model, as one object.

Built from :class:`~fp16guard.settings.VerifySettings` (:meth:`Gate.from_settings`): outputs named
in ``output_gates`` get the metric registered under their gate's name (:data:`METRICS`), the
others the numeric metric of the settings' tolerances. :meth:`Gate.tightened` scales every
metric's tolerance and keeps everything else — an output the user put under a top-1 gate stays
under a (stricter) top-1 gate when a search aims below the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from fp16guard.settings import OutputGate, VerifySettings
from fp16guard.verify.metrics.agreement import AgreementMetric
from fp16guard.verify.metrics.base import Metric
from fp16guard.verify.metrics.custom import load_custom_metric
from fp16guard.verify.metrics.numeric import NumericMetric

__all__ = ["Gate", "METRICS", "register_metric", "metric_for"]


def _agreement(gate: OutputGate, _settings: VerifySettings) -> Metric:
    return AgreementMetric(name=gate.gate, min_agreement=gate.min_agreement, k=gate.k, threshold=gate.threshold)


#: Gate name -> ``factory(output_gate, verify_settings) -> Metric``, in the order shown to users.
METRICS: dict[str, Callable[[OutputGate, VerifySettings], Metric]] = {
    "numeric": lambda _g, s: NumericMetric(s.max_rel_error, s.min_cosine, s.max_mismatch_fraction),
    "top1": _agreement,
    "topk": _agreement,
    "threshold": _agreement,
    "iou": _agreement,
    "custom": lambda g, _s: load_custom_metric(g.metric, g),
}


def register_metric(name: str, factory: Callable[[OutputGate, VerifySettings], Metric]) -> None:
    """Add a built-in gate kind (``OutputGate.gate`` must also accept the name)."""
    METRICS[name] = factory


def metric_for(gate: OutputGate | None, settings: VerifySettings) -> Metric:
    """The metric ``gate`` names (the settings' numeric metric when ``gate`` is None)."""
    return METRICS[(gate or OutputGate()).gate](gate or OutputGate(), settings)


@dataclass(frozen=True)
class Gate:
    """Every output's metric.

    Attributes:
        settings: the verification settings the gate was built from (as the user gave them).
        default: the metric of outputs not named in ``per_output`` (numeric).
        per_output: metric per output name the user gave a gate.
        factor: how much the tolerances were tightened (1.0: the user's gate).
    """

    settings: VerifySettings
    default: Metric
    per_output: Mapping[str, Metric] = field(default_factory=dict)
    factor: float = 1.0

    @classmethod
    def from_settings(cls, settings: "VerifySettings | Gate | None") -> "Gate":
        """The gate of ``settings`` (a Gate is returned as it is; None: the default settings)."""
        if isinstance(settings, Gate):
            return settings
        settings = settings or VerifySettings()
        per = {name: metric_for(g, settings) for name, g in settings.output_gates.items()}
        return cls(settings=settings, default=metric_for(None, settings), per_output=per)

    def metric(self, output: str) -> Metric:
        """The metric that judges ``output``."""
        return self.per_output.get(output, self.default)

    def gate_name(self, output: str) -> str:
        """The gate's name for ``output`` (``numeric`` unless the user chose another)."""
        return self.metric(output).name

    def output_gate(self, output: str) -> OutputGate | None:
        """The user's :class:`OutputGate` of ``output`` (None: numeric by default)."""
        return self.settings.output_gates.get(output)

    def tightened(self, factor: float) -> "Gate":
        """Every metric's tolerance times ``factor`` (0 < factor <= 1); per-output gates kept."""
        if not 0 < factor <= 1:
            raise ValueError(f"a gate is tightened by a factor in (0, 1]; got {factor}")
        return Gate(
            settings=self.settings,
            default=self.default.tightened(factor),
            per_output={k: m.tightened(factor) for k, m in self.per_output.items()},
            factor=self.factor * factor,
        )

    def score(self, outputs: Mapping[str, Mapping[str, Any]]) -> float:
        """The worst failure ratio over ``outputs`` (figures per name); ``<= 1`` passes every
        tolerance, ``inf`` when any candidate output holds NaN/inf or could not be compared."""
        worst = 0.0
        for name, fig in outputs.items():
            value = math.inf if fig.get("error") else self.metric(name).score(fig)
            worst = max(worst, value)
        return worst

    def tolerances(self) -> dict[str, Any]:
        """The settings as a dict (``verification.json`` → ``tolerances``), with ``factor``
        when tightened."""
        out = self.settings.model_dump()
        if self.factor != 1.0:
            out["factor"] = self.factor
        return out
