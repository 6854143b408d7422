"""Statistics of the folded model: :func:`scaled_stats` (see :mod:`fp16guard.graph.fold_scales`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

import onnx

from fp16guard.graph.constants import ConstantTable
from fp16guard.graph.scales.guards import FP16_MIN_NORMAL
from fp16guard.graph.scales.kinds import SMALLEST_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["scaled_stats"]


def _fill_row(template: dict, name: str, producer: tuple[str, str, int], value: float) -> dict:
    """A statistics row for a ConstantOfShape output of ``value``: ``template``'s columns (shard
    bookkeeping), figures of a tensor whose every element is ``value`` (the ``examined`` count
    of the template, so proportions read right)."""
    row = dict(template)
    magnitude = abs(value)
    row.update(tensor=name, producer=producer[0], op_type=producer[1], output_index=producer[2], min=value, max=value, max_abs=magnitude, nonfinite=0 if math.isfinite(value) else 1)
    examined = row.get("examined")
    if examined is not None:
        small = 0 < magnitude < FP16_MIN_NORMAL
        row.update(
            nonzero=examined if magnitude else 0,
            subnormal=examined if small else 0,
            min_nonzero_abs=magnitude if magnitude else math.inf,
            abs_sum=magnitude * examined,
            subnormal_abs_sum=magnitude * examined if small else 0.0,
        )
    return row


#: Statistics columns that hold magnitudes of a tensor's values: divided by 2**e when it is scaled.
_MAGNITUDE_COLUMNS = frozenset({"min", "max", "max_abs", "abs_sum"} | set(SMALLEST_COLUMNS))
#: Columns that depend on where values fall against FP16's fixed limits: unknown (null) once scaled.
_UNKNOWN_WHEN_SCALED = frozenset({"subnormal", "subnormal_abs_sum"})


def scaled_stats(stats: "pa.Table", folded: onnx.ModelProto, exponents: Mapping[str, int], new_tensors: Mapping[str, tuple[str, int]]) -> "pa.Table":
    """The statistics the folded model would have measured: one row per tensor it holds.

    Rows of tensors that survive are divided by ``2**e``; tensors the pass added (converters,
    ``__scaled`` outputs) get their source's row divided by their exponent; rows of tensors that
    no longer exist (a Conv's output before a folded BatchNormalization) are dropped. The
    table keeps ``stats``'s schema.
    """
    import pyarrow as pa

    rows = {r["tensor"]: r for r in stats.to_pylist()}
    scaled = [c for c in stats.column_names if c in _MAGNITUDE_COLUMNS]
    unknown = [c for c in stats.column_names if c in _UNKNOWN_WHEN_SCALED and stats.schema.field(c).nullable]
    present = {v.name for v in folded.graph.input} | {o for n in folded.graph.node for o in n.output if o}
    out: list[dict] = []

    def scale(row: dict, exponent: int, name: str, producer: dict | None = None) -> dict:
        new = dict(row)
        new["tensor"] = name
        if producer:
            new.update({k: v for k, v in producer.items() if k in new})
        if exponent:
            for c in scaled:
                if new.get(c) is not None:
                    new[c] = float(new[c]) / 2.0**exponent
            for c in unknown:
                new[c] = None
        return new

    producers = {o: (n.name, n.op_type, i) for n in folded.graph.node for i, o in enumerate(n.output) if o}
    restored = {v.name for v in folded.graph.output}  # graph outputs always hold true values
    # Fills the pass wrote (folded weights, dropped biases): their figures follow from their value.
    fills = ConstantTable(folded).fills
    template = next(iter(rows.values()), None)
    for name, fill in fills.items():
        if name not in rows and template is not None and name in producers:
            out.append(_fill_row(template, name, producers[name], fill.value))
    for name, row in rows.items():
        if name in present:
            prod = producers.get(name) if name in restored and exponents.get(name) else None
            extra = {"producer": prod[0], "op_type": prod[1], "output_index": prod[2]} if prod else None  # now the restore Mul
            out.append(scale(row, 0 if name in restored else int(exponents.get(name, 0)), name, extra))
    for name, (source, exponent) in new_tensors.items():
        if source in rows and name in present:
            prod = producers.get(name)
            extra = {"producer": prod[0], "op_type": prod[1], "output_index": prod[2]} if prod else None
            out.append(scale(rows[source], exponent, name, extra))
    return pa.Table.from_pylist(out, schema=stats.schema)
