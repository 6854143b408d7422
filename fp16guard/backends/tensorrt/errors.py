"""Errors of the TensorRT backend, as subclasses of fp16guard's two exception families."""

from __future__ import annotations

from fp16guard.errors import ConfigError, UserError, VerificationFailed
# Defined with the probe, below the runner that raises it too (docs/ARCHITECTURE.md layers).
from fp16guard.runners.tensorrt_env import UNAVAILABLE_HINT, TensorRTUnavailable

__all__ = ["UNAVAILABLE_HINT", "EnginePrecisionError", "EngineBuildError", "TensorRTUnavailable", "TypingModeError"]


class TypingModeError(ConfigError):
    """The requested typing mode does not exist in the installed TensorRT (e.g. weak on 11.x)."""


class EngineBuildError(UserError):
    """TensorRT could not parse the model or build the engine (message carries TensorRT's reason)."""


class EnginePrecisionError(VerificationFailed):
    """The built engine runs layers of FP32 plan nodes in another precision (exit status 1).

    TensorRT may ignore precision constraints when it finds no FP32 kernel, and fusion may
    carry FP16 through a pinned node; the engine is then not the artifact the plan asked for.

    Attributes:
        violations: one dict per offending tensor: ``node``, ``layer``, ``tensor``, ``role``
            ("input" or "output") and ``dtype`` (see :mod:`.inspector`).
    """

    def __init__(self, reason: str, violations: list[dict] | None = None, report: dict | None = None):
        super().__init__(reason, report)
        self.violations = list(violations or [])
