"""What the planner needs to know about stored float values (initializers, Constant attributes).

A :class:`ValueSummary` is computed once per tensor, in chunks (external weights are read through
a read-only memory map, so a model's weights are never all in memory), and holds the figures the
range and underflow rules read: the largest magnitude, and how many non-zero values fall below
FP16's normal range (they lose precision) or below half its smallest subnormal (they become 0).

FP16 facts used here (IEEE 754 binary16; see ``docs/FP16.md``): largest finite 65504, smallest
normal 2**-14 ≈ 6.10e-5, smallest subnormal 2**-24 ≈ 5.96e-8; round-to-nearest-even makes every
|x| <= 2**-25 zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from fp16guard.io.model import FLOAT_TYPES

__all__ = ["FP16_MIN_NORMAL", "FP16_FLUSH", "FP16_LOSSY", "ValueSummary", "summarize_array", "summarize_tensor", "constant_value"]

#: Smallest positive normal FP16 value (2**-14 ≈ 6.10e-5): below it FP16 keeps fewer than 11 bits.
FP16_MIN_NORMAL = 2.0**-14
#: Magnitudes at or below this (half the smallest subnormal, 2**-25 ≈ 2.98e-8) round to 0 in FP16.
FP16_FLUSH = 2.0**-25
#: Below this (2**-19 ≈ 1.9e-6) FP16 keeps at most 5 of its 11 significant bits (relative error
#: up to ~1.6%), and at or below :data:`FP16_FLUSH` none: "most of its bits lost".
FP16_LOSSY = 2.0**-19
#: Elements per chunk when scanning values (memory stays ~64 MB of float64 whatever the size).
_CHUNK = 1 << 23


@dataclass(frozen=True)
class ValueSummary:
    """Figures of one stored float tensor, over all its elements.

    Attributes:
        count: elements.
        max_abs: largest |x| (NaN when any element is NaN, as ``np.max`` gives).
        nonzero: finite non-zero elements.
        min_nonzero_abs: smallest non-zero finite |x| (``inf`` when there is none).
        subnormal: finite non-zero elements with |x| < :data:`FP16_MIN_NORMAL` (they lose bits
            in FP16 or vanish).
        flushed: finite non-zero elements with |x| <= :data:`FP16_FLUSH` (they become 0 in FP16).
        lossy: finite non-zero elements with |x| < :data:`FP16_LOSSY` (they lose most bits or vanish).
        abs_sum: sum of finite |x|.
        subnormal_abs_sum: sum of |x| over the ``subnormal`` elements.
        lossy_abs_sum: sum of |x| over the ``lossy`` elements.
    """

    count: int
    max_abs: float
    nonzero: int = 0
    min_nonzero_abs: float = math.inf
    subnormal: int = 0
    flushed: int = 0
    abs_sum: float = 0.0
    subnormal_abs_sum: float = 0.0
    lossy: int = 0
    lossy_abs_sum: float = 0.0

    def merge(self, other: "ValueSummary") -> "ValueSummary":
        """The summary of the two tensors' elements together."""
        return ValueSummary(
            count=self.count + other.count,
            max_abs=float(np.max([self.max_abs, other.max_abs])) if self.count and other.count else (self.max_abs if self.count else other.max_abs),
            nonzero=self.nonzero + other.nonzero,
            min_nonzero_abs=min(self.min_nonzero_abs, other.min_nonzero_abs),
            subnormal=self.subnormal + other.subnormal,
            flushed=self.flushed + other.flushed,
            abs_sum=self.abs_sum + other.abs_sum,
            subnormal_abs_sum=self.subnormal_abs_sum + other.subnormal_abs_sum,
            lossy=self.lossy + other.lossy,
            lossy_abs_sum=self.lossy_abs_sum + other.lossy_abs_sum,
        )


def summarize_array(array: np.ndarray) -> ValueSummary:
    """Summarise a float array (any shape; float64 arithmetic). Memory: a few copies of ``array``."""
    flat = np.abs(np.asarray(array, dtype=np.float64).reshape(-1))
    if flat.size == 0:
        return ValueSummary(count=0, max_abs=0.0)
    finite = flat[np.isfinite(flat)]
    nz = finite[finite > 0]
    small = nz[nz < FP16_MIN_NORMAL]
    tiny = small[small < FP16_LOSSY]
    return ValueSummary(
        count=int(flat.size),
        max_abs=float(np.max(flat)),
        nonzero=int(nz.size),
        min_nonzero_abs=float(nz.min()) if nz.size else math.inf,
        subnormal=int(small.size),
        flushed=int(np.count_nonzero(small <= FP16_FLUSH)),
        abs_sum=float(finite.sum()),
        subnormal_abs_sum=float(small.sum()),
        lossy=int(tiny.size),
        lossy_abs_sum=float(tiny.sum()),
    )


def _summarize_chunks(data: np.ndarray) -> ValueSummary:
    total = ValueSummary(count=0, max_abs=0.0)
    for start in range(0, data.shape[0], _CHUNK):
        total = total.merge(summarize_array(data[start : start + _CHUNK]))
    return total


def summarize_tensor(tensor: onnx.TensorProto, weights_dir: Path | None = None) -> ValueSummary | None:
    """Summarise a float tensor proto; None when its data is external and cannot be read.

    External data is read from ``weights_dir`` (the model's folder) through a read-only memory
    map, in chunks. A location escaping that folder, or a missing file, counts as unreadable.
    """
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return _summarize_chunks(numpy_helper.to_array(tensor).reshape(-1))
    dtype = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64}.get(tensor.data_type)
    if weights_dir is None or dtype is None:
        return None
    info = {entry.key: entry.value for entry in tensor.external_data}
    base = weights_dir.resolve()
    path = (base / info.get("location", "")).resolve()
    if base not in path.parents or not path.is_file():
        return None  # missing, or escaping the model folder: treated as unknown
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if count == 0:
        return ValueSummary(count=0, max_abs=0.0)
    data = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=int(info.get("offset", 0)), shape=(count,))
    return _summarize_chunks(data)


def constant_value(node: onnx.NodeProto) -> ValueSummary | None:
    """Summary of a Constant/ConstantOfShape node's float value attribute.

    None when the value is not float, or absent (ConstantOfShape then fills with 0.0, which
    FP16 holds exactly).
    """
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return summarize_tensor(attr.t) if attr.t.data_type in FLOAT_TYPES else None
        if attr.name == "value_float":
            return summarize_array(np.array([attr.f]))
        if attr.name == "value_floats":
            return summarize_array(np.array(list(attr.floats)))
    return None
