"""The two statistics tables, their declared Arrow schemas, and validated parquet I/O.

* ``shard_stats.parquet`` (:data:`SHARD_SCHEMA`): one row per (shard, tensor).
* ``stats.parquet`` (:data:`STATS_SCHEMA`): one row per tensor, reduced over all shards.

Writers produce exactly these schemas; readers check every column's presence and type and
raise :class:`fp16guard.errors.DataError` naming the first missing or mistyped column.

Columns added after the first release (:data:`ADDED_COLUMNS`: the underflow figures and
``nonfinite_shard``) are nullable: a file written before them still reads, with those columns
null, which means *not measured* (rules treat null as unknown, never as zero). The underflow
figures are also null for a tensor on a shard where it held NaN/inf (they cannot be counted
then). FP16's smallest normal is 2**-14 (about 6.10e-5); see docs/NUMERICS.md.
"""

from __future__ import annotations

import os

import pyarrow as pa

from fp16guard.io.atomic import atomic_path
from fp16guard.errors import DataError

_TENSOR_FIELDS = [
    pa.field("tensor", pa.string(), nullable=False),
    pa.field("producer", pa.string(), nullable=False),  # "" for graph inputs
    pa.field("op_type", pa.string(), nullable=False),  # "" for graph inputs
    pa.field("output_index", pa.int32(), nullable=False),  # -1 for graph inputs
    pa.field("order", pa.int32(), nullable=False),  # graph order
    pa.field("min", pa.float64(), nullable=False),
    pa.field("max", pa.float64(), nullable=False),
    pa.field("max_abs", pa.float64(), nullable=False),  # max(-min, max)
    pa.field("nonfinite", pa.int64(), nullable=False),  # NaN/inf elements
    # Underflow figures (nullable: null = not measured), over the ``examined`` elements: a strided
    # sample of 65536-131071 elements per tensor and inference call, every element of smaller
    # tensors (fp16guard.graph.instrument).
    pa.field("nonzero", pa.int64()),  # examined elements != 0
    pa.field("subnormal", pa.int64()),  # examined elements with 0 < |x| < 2**-14 (FP16 smallest normal)
    pa.field("min_nonzero_abs", pa.float64()),  # smallest non-zero |x| examined (inf: none)
    pa.field("examined", pa.int64()),  # elements behind these six figures
    pa.field("abs_sum", pa.float64()),  # sum of |x| over the examined elements
    pa.field("subnormal_abs_sum", pa.float64()),  # sum of |x| over the ``subnormal`` elements
]

#: Columns newer than the first schema: a file without them reads with them null.
ADDED_COLUMNS = frozenset({"nonzero", "subnormal", "min_nonzero_abs", "examined", "abs_sum", "subnormal_abs_sum", "nonfinite_shard"})

#: One row per (shard, tensor). ``samples``: samples in the shard.
SHARD_SCHEMA = pa.schema(
    [pa.field("shard", pa.string(), nullable=False), pa.field("shard_sha256", pa.string(), nullable=False)]
    + _TENSOR_FIELDS
    + [pa.field("samples", pa.int64(), nullable=False)]
)

#: One row per tensor. ``shards``: shards that measured it; ``samples``: their samples in total;
#: ``max_shard``: name of the shard where the largest max |x| was seen (first one on ties);
#: ``nonfinite_shard``: the first shard (input order) where the tensor held NaN/inf, "" if none.
STATS_SCHEMA = pa.schema(
    _TENSOR_FIELDS
    + [
        pa.field("shards", pa.int64(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("max_shard", pa.string(), nullable=False),
        pa.field("nonfinite_shard", pa.string()),
    ]
)


def validate(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Check that ``table`` has every column of ``schema`` with its type; return it in schema order.

    A column of :data:`ADDED_COLUMNS` that ``table`` lacks (a file written by an older
    fp16guard) is added as all-null.

    Raises:
        DataError: naming the first missing or mistyped column.
    """
    if table.schema.equals(schema, check_metadata=True):
        return table  # already this schema (every table the statistics pass makes): nothing to cast
    for field in schema:
        if field.name not in table.column_names and field.name in ADDED_COLUMNS:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            continue
        if field.name not in table.column_names:
            raise DataError(f"{what} has no column '{field.name}' (it has {table.column_names}); expected the columns {schema.names}")
        got = table.schema.field(field.name).type
        if got != field.type and not (pa.types.is_null(got) and field.nullable):
            raise DataError(f"{what}: column '{field.name}' has type {got}; expected {field.type}")
    return table.select(schema.names).cast(schema)


def _write(table: pa.Table, path: str | os.PathLike, schema: pa.Schema, what: str) -> None:
    import pyarrow.parquet as pq

    table = validate(table, schema, what)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _read(path: str | os.PathLike, schema: pa.Schema, what: str) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist; expected a parquet file written by fp16guard") from None
    except Exception as exc:
        raise DataError(f"{what} {path} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
    return validate(table, schema, f"{what} {path}")


def write_stats(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a STATS_SCHEMA table to ``path`` as parquet, atomically (validated first)."""
    _write(table, path, STATS_SCHEMA, "stats table")


def write_shard_stats(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a SHARD_SCHEMA table to ``path`` as parquet, atomically (validated first)."""
    _write(table, path, SHARD_SCHEMA, "shard stats table")


def read_stats(path: str | os.PathLike) -> pa.Table:
    """Read and validate a ``stats.parquet``. Raises DataError on a missing/mistyped column."""
    return _read(path, STATS_SCHEMA, "stats file")


def read_shard_stats(path: str | os.PathLike) -> pa.Table:
    """Read and validate a ``shard_stats.parquet``. Raises DataError on a missing/mistyped column."""
    return _read(path, SHARD_SCHEMA, "shard stats file")
