"""Which typing mode a build uses, decided from the installed TensorRT version.

TensorRT 11 removed weak typing (``BuilderFlag.FP16``, ``OBEY_PRECISION_CONSTRAINTS``,
``layer.precision``): every network is strongly typed and precision comes from the tensor types
of the graph, i.e. from ``model.mixed.onnx`` (docs/FACTS.md #7). TensorRT 8.6-10.x build weakly typed
networks with per-layer FP32 constraints; 10.12+ may also build strongly typed on request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fp16guard.backends.tensorrt.errors import TypingModeError

#: Oldest TensorRT this backend supports (per-layer output types + OBEY_PRECISION_CONSTRAINTS
#: + the ONNX parser's ``parse_from_file`` and engine inspector JSON are all present from 8.6).
MIN_VERSION = (8, 6)
#: First version whose strongly typed builds we accept on request (docs/FACTS.md #7).
STRONG_OPT_IN = (10, 12)
#: First version without weak typing.
STRONG_ONLY = (11, 0)

MODES = ("auto", "strong", "weak")

_VERSION = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class ModeChoice:
    """The typing mode of one build and why it was chosen (recorded in the lineage).

    Attributes:
        mode: "strong" (parse ``model.mixed.onnx``; precision from tensor types) or "weak"
            (parse the FP32 model; FP16 flag plus FP32 constraints on plan layers).
        requested: what the user asked for ("auto", "strong" or "weak").
        version: the TensorRT version string the choice was made for.
        reason: one sentence.
    """

    mode: str
    requested: str
    version: str
    reason: str

    def to_dict(self) -> dict:
        return {"mode": self.mode, "requested": self.requested, "tensorrt_version": self.version, "reason": self.reason}


def parse_version(version: str) -> tuple[int, int, int]:
    """``"10.12.0.36"`` -> ``(10, 12, 0)``; ``"8.6.1.post1"`` -> ``(8, 6, 1)``.

    Raises:
        TypingModeError: the string does not start with ``<major>.<minor>``.
    """
    match = _VERSION.match(str(version))
    if not match:
        raise TypingModeError(f"TensorRT version {version!r} is not of the form <major>.<minor>[.<patch>]")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def choose_mode(version: str, requested: str = "auto") -> ModeChoice:
    """Pick the typing mode for TensorRT ``version``.

    ``auto``: strong on 11.x (the only mode there), weak on 8.6-10.x (the per-layer recipe lets
    the builder choose FP16 kernels wherever the plan allows; strong typing stays opt-in there).

    Args:
        version: ``tensorrt.__version__``.
        requested: "auto" (default), "strong" or "weak".

    Raises:
        TypingModeError: unknown mode; TensorRT older than 8.6; "weak" on 11.x; "strong" before 10.12.
    """
    if requested not in MODES:
        raise TypingModeError(f"TensorRT typing mode {requested!r} is unknown; expected one of {', '.join(MODES)}")
    v = parse_version(version)
    if v[:2] < MIN_VERSION:
        raise TypingModeError(f"TensorRT {version} is too old; the tensorrt backend needs TensorRT 8.6 or newer")
    if v[:2] >= STRONG_ONLY:
        if requested == "weak":
            raise TypingModeError(
                f"TensorRT {version} has no weak typing (removed in 11.0); use mode 'strong' or 'auto', or TensorRT 8.6-10.x for 'weak'"
            )
        why = "requested" if requested == "strong" else "auto"
        return ModeChoice("strong", requested, version, f"{why}: TensorRT {v[0]}.{v[1]} builds strongly typed networks only; precision comes from model.mixed.onnx")
    if requested == "strong":
        if v[:2] < STRONG_OPT_IN:
            raise TypingModeError(
                f"strongly typed builds need TensorRT 10.12 or newer (installed: {version}); use mode 'weak' or 'auto'"
            )
        return ModeChoice("strong", requested, version, f"requested: TensorRT {v[0]}.{v[1]} accepts STRONGLY_TYPED; precision comes from model.mixed.onnx")
    why = "requested" if requested == "weak" else "auto"
    return ModeChoice(
        "weak",
        requested,
        version,
        f"{why}: TensorRT {v[0]}.{v[1]} supports per-layer precision; FP16 flag with OBEY_PRECISION_CONSTRAINTS and FP32 on every layer of a plan node",
    )
