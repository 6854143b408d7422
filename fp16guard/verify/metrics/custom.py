"""User-supplied gates: ``OutputGate(gate="custom", metric="package.module:factory")``.

``factory(gate)`` receives the :class:`~fp16guard.settings.OutputGate` and returns an object
satisfying :class:`fp16guard.verify.metrics.base.Metric`. It is imported where verification runs
(a worker must be able to import it too).
"""

from __future__ import annotations

import importlib

from fp16guard.errors import ConfigError
from fp16guard.verify.metrics.base import Metric

__all__ = ["load_custom_metric"]


def load_custom_metric(spec: str | None, gate) -> Metric:
    """Import ``spec`` (``module:callable``) and build the metric for ``gate``.

    Raises:
        ConfigError: no spec, the module or callable cannot be imported, or what it returns is
            not a Metric (one line naming the spec and what was expected).
    """
    if not spec or ":" not in spec:
        raise ConfigError(f"custom gate metric {spec!r} is not accepted; expected 'package.module:factory' returning a Metric")
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"custom gate metric {spec!r} cannot be imported ({exc}); expected 'package.module:factory' importable where the run executes") from None
    metric = factory(gate)
    if not isinstance(metric, Metric):
        raise ConfigError(f"custom gate metric {spec!r} returned {type(metric).__name__}; expected an object with name, accumulator, judge, score and tightened (fp16guard.verify.metrics.Metric)")
    return metric
