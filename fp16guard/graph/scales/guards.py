"""Whether a rescaled weight, bias or constant keeps its FP16 precision (see
:mod:`fp16guard.graph.fold_scales`)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FP16_MIN_NORMAL", "FP16_UNIT", "FP16_SMALLEST", "NEGLIGIBLE_BIAS", "faithful", "rescaled_constant"]

#: FP16's smallest normal magnitude, unit round-off and smallest subnormal.
FP16_MIN_NORMAL = 2.0**-14
FP16_UNIT = 2.0**-11
FP16_SMALLEST = 2.0**-24
#: A Conv/Gemm/MatMul bias whose folded value FP16 cannot hold is dropped (set to 0) when it is
#: below this fraction of the mean |x| of the node's output (FP16's unit round-off): an FP16
#: output of typical size cannot hold such a bias anyway.
NEGLIGIBLE_BIAS = 2.0**-11


def _fp16_rel_error(values: np.ndarray) -> float:
    """Relative L2 error of storing ``values`` in FP16 (inf when something overflows)."""
    a = np.asarray(values, dtype=np.float32).ravel()
    if a.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        r = a.astype(np.float16).astype(np.float32)
    if not np.all(np.isfinite(r[np.isfinite(a)])):
        return math.inf
    norm = float(np.linalg.norm(a.astype(np.float64)))
    return float(np.linalg.norm((r - a).astype(np.float64))) / norm if norm else 0.0


def _subnormal_mass(values: np.ndarray) -> float:
    """Share of the L1 magnitude of ``values`` that lies below FP16's normal range (0 < |x| < 2**-14)."""
    a = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    total = float(a.sum())
    return float(a[(a > 0) & (a < FP16_MIN_NORMAL)].sum()) / total if total else 0.0


def faithful(original: np.ndarray, rescaled: np.ndarray) -> bool:
    """True when ``rescaled`` keeps (about) the FP16 precision ``original`` has: relative L2 rounding
    error at most twice the original's, or below FP16's unit round-off; and no more than FP16's
    unit round-off of its magnitude newly below FP16's normal range (see the module docstring).

    Why the second test: a subnormal FP16 weight keeps few bits, and any further scaling
    flushes it. onnxruntime does scale weights further: it fuses a Mul that follows a Conv into
    the Conv's FP16 weights, in FP16 (docs/FACTS.md #6a: light ResNet-50 folded with weights of
    4.4e-5 ran with logits 0.49 off). Weights kept in the normal range have 14 powers of two of
    room below them."""
    after = _fp16_rel_error(rescaled)
    if after > max(2.0 * _fp16_rel_error(original), FP16_UNIT):
        return False
    return _subnormal_mass(rescaled) <= max(_subnormal_mass(original), FP16_UNIT)


def rescaled_constant(value: np.ndarray, exponent: int, operand_max: float | None) -> np.ndarray | None:
    """``value / 2**exponent``, or None when FP16 would lose it. An epsilon (at most 2**-10 of the
    operand's max |x|) may lose precision but is kept at least at FP16's smallest subnormal."""
    value = np.asarray(value, dtype=np.float32)
    if exponent == 0:
        return value
    scaled = (value.astype(np.float64) / 2.0**exponent).astype(np.float32)
    if faithful(value, scaled):
        return scaled
    biggest = float(np.max(np.abs(value))) if value.size else 0.0
    if operand_max is not None and not math.isnan(operand_max) and biggest * 2.0**10 <= operand_max:
        floor = np.float32(FP16_SMALLEST)
        keep = np.where((value != 0) & (np.abs(scaled) < floor), np.sign(value) * floor, scaled)
        return keep.astype(np.float32)
    return None
