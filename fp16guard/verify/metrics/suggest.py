"""When the numeric gate fails but a task view agrees, say which gate would pass and by how much.

The default gate stays numeric (strict); the user chooses a task gate knowingly. A suggestion is
made for an output the numeric gate failed, whose candidate holds no NaN/inf, when:

- it has a class axis and the top-1 class agrees at :data:`MIN_SUGGESTED` of positions or more
  (``top1``, with ``@share`` when not every position agrees);
- it has none, its FP32 values lie in [0, 1] (a probability or score map) and the map cut at 0.5
  has an IoU with FP32's of at least :data:`MIN_SUGGESTED` (``iou``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["MIN_SUGGESTED", "suggest_gates"]

#: The smallest agreement worth suggesting as a gate.
MIN_SUGGESTED = 0.99


def _floor(value: float, digits: int = 3) -> float:
    return math.floor(value * 10**digits) / 10**digits


def suggest_gates(outputs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Gate suggestions for the failed numeric outputs of a report's ``outputs``.

    Returns:
        ``{"output", "gate", "flag", "sentence"}`` per suggestion (``flag`` is the ``--gate``
        value that would pass), in output order.
    """
    found: list[dict[str, Any]] = []
    for name, fig in outputs.items():
        if fig.get("passed", True) or (fig.get("gate") or "numeric") != "numeric" or fig.get("kind") != "float" or fig.get("nonfinite") or fig.get("error"):
            continue
        checks = fig.get("checks") or {}
        top1, positions = checks.get("top1_agreement"), checks.get("positions")
        iou = checks.get("threshold_iou")
        if top1 is not None and positions and top1 >= MIN_SUGGESTED:
            share = _floor(top1)
            spec = "top1" if top1 >= 1.0 else f"top1@{share:g}"
            agree = round(top1 * positions)
            found.append({"output": name, "gate": spec, "flag": f"{name}={spec}", "sentence": f"top-1 agrees at {agree} of {positions} positions: `--gate {name}={spec}` would pass"})
        elif top1 is None and iou is not None and iou >= MIN_SUGGESTED and (fig.get("ref_max_abs") or 0) <= 1.0:
            spec = "iou" if iou >= 1.0 else f"iou:0.5@{_floor(iou):g}"
            found.append({"output": name, "gate": spec, "flag": f"{name}={spec}", "sentence": f"the map cut at 0.5 has IoU {iou:.4g} with FP32's: `--gate {name}={spec}` would pass"})
    return found
