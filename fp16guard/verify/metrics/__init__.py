"""Gates as objects: the :class:`Metric` protocol, the built-in metrics, their registry, and the
:class:`Gate` that holds one metric per output (see :mod:`fp16guard.verify.metrics.base`)."""

from fp16guard.verify.metrics.agreement import AgreementMetric
from fp16guard.verify.metrics.base import Accumulator, Failure, Metric
from fp16guard.verify.metrics.gate import METRICS, Gate, metric_for, register_metric
from fp16guard.verify.metrics.numeric import NumericMetric
from fp16guard.verify.metrics.suggest import suggest_gates

__all__ = ["Accumulator", "AgreementMetric", "Failure", "Gate", "METRICS", "Metric", "NumericMetric", "metric_for", "register_metric", "suggest_gates"]
