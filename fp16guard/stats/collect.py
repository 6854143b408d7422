"""Per-shard activation statistics, measured inside the graph, and their reduction over shards.

:class:`StatsSession` opens the instrumented model once and measures shard after shard;
:func:`shard_stats` measures one shard; :func:`reduce_stats` folds per-shard tables into one row
per tensor. Memory is one shard's feeds plus the model: statistics are scalars.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from fp16guard.io import shards as data
from fp16guard.errors import NonFiniteError
from fp16guard.graph.instrument import TensorInfo, float_tensors, instrument, output_names
from fp16guard.io.model import input_specs, normalize_model
from fp16guard.stats.schema import (  # noqa: F401  (re-exported: the public stats API lives here)
    SHARD_SCHEMA,
    STATS_SCHEMA,
    read_shard_stats,
    read_stats,
    validate,
    write_shard_stats,
    write_stats,
)


class StatsSession:
    """One instrumented onnxruntime session that measures many shards.

    The model's weights are never copied into Python: the graph is read with
    :func:`fp16guard.io.lazy_weights.load_graph_only` and onnxruntime reads the weights from the
    model file (see that module for why).

    Args:
        model_path: the FP32 ``.onnx`` file (external data resolved relative to its folder).
        batch_size: samples per inference call when the model's batch is dynamic; default: the
            whole shard. A static batch in the model always wins (slices of that size).
        providers: onnxruntime execution providers; default CPU.

    Example:
        >>> with StatsSession("model.onnx") as session:
        ...     tables = [session.run(ref) for ref in shards]
    """

    def __init__(self, model_path: str | os.PathLike, batch_size: int | None = None, providers: list[str] | None = None):
        from fp16guard.io.lazy_weights import load_graph_only

        self.model_path = Path(model_path)
        self.batch_size = batch_size
        self.providers = providers
        model = normalize_model(load_graph_only(self.model_path))
        self.specs = input_specs(model)
        self.tensors: list[TensorInfo] = float_tensors(model)
        self._model = model  # graph only (weights are references): small
        self._runner = None

    def __enter__(self) -> "StatsSession":
        from fp16guard.runners.onnxrt import OnnxRuntimeRunner

        self._runner = OnnxRuntimeRunner(
            instrument(self._model, self.tensors),
            providers=self.providers,
            external_data_dir=self.model_path.parent,
            # onnxruntime's default order runs every reduction after the last layer, keeping
            # each measured activation alive until then; priority-based order runs a reduction
            # right after its producer (measured on VGG-19: inference 1.35x -> ~1.0x a plain pass).
            execution_order="priority_based",
        )
        self._runner.activate()
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self._runner.close()
        self._runner = None

    def run(self, ref: data.ShardRef) -> pa.Table:
        """Measure one shard. Returns a SHARD_SCHEMA table, one row per tensor in graph order.

        Raises:
            DataError: the shard does not fit the model (see ``data.prepare_feeds``).
            NonFiniteError: an FP32 activation holds NaN/inf (names the shard and the first
                such tensor in graph order).
        """
        if self._runner is None:
            raise RuntimeError("StatsSession is not open; use it as a context manager")
        feeds = data.prepare_feeds(ref, data.load_shard(ref), self.specs)
        samples = data.batch_count(feeds)
        size = data.slice_size(self.specs, samples, self.batch_size)
        n = len(self.tensors)
        lo = np.full(n, np.inf)
        hi = np.full(n, -np.inf)
        names = [output_names(k) for k in range(n)]
        fetch = [name for triple in names for name in triple]
        for piece in data.iter_slices(feeds, size):
            with data.shard_context(ref):
                values = self._runner.infer(piece, fetch)
            mins = np.array([values[a] for a, _, _ in names], dtype=np.float64)
            maxs = np.array([values[b] for _, b, _ in names], dtype=np.float64)
            flags = np.array([values[c] for _, _, c in names], dtype=np.float64)
            # +inf min / -inf max is an empty tensor, not a non-finite one.
            suspect = ~np.isfinite(flags) | np.isnan(mins) | np.isnan(maxs) | (mins == -np.inf) | (maxs == np.inf)
            if suspect.any():
                self._diagnose(ref, piece, np.flatnonzero(suspect))
            lo = np.minimum(lo, mins)
            hi = np.maximum(hi, maxs)
        max_abs = np.maximum(-lo, hi)
        max_abs = np.where(np.isfinite(max_abs), max_abs, 0.0)  # tensors empty on every sample
        digest = data.shard_digest(ref)
        cols = {
            "shard": [ref.name] * n,
            "shard_sha256": [digest] * n,
            "tensor": [t.name for t in self.tensors],
            "producer": [t.producer for t in self.tensors],
            "op_type": [t.op_type for t in self.tensors],
            "output_index": [t.output_index for t in self.tensors],
            "order": [t.order for t in self.tensors],
            "min": lo,
            "max": hi,
            "max_abs": max_abs,
            "nonfinite": np.zeros(n, dtype=np.int64),
            "samples": [samples] * n,
        }
        return pa.table(cols, schema=SHARD_SCHEMA)

    def _diagnose(self, ref: data.ShardRef, feeds: dict[str, np.ndarray], suspects: np.ndarray) -> None:
        """Count NaN/inf exactly in the suspected tensors; raise on the first real one.

        A flag can be a false alarm (a sum of huge finite values overflowing float32): then
        this returns and the statistics stand. Runs a second, costlier model (full-size
        boolean temporaries), only for this slice.
        """
        from fp16guard.runners.onnxrt import OnnxRuntimeRunner

        chosen = [self.tensors[k] for k in suspects]
        counted = instrument(self._model, chosen, exact_counts=True)
        with OnnxRuntimeRunner(counted, providers=self.providers, external_data_dir=self.model_path.parent) as runner:
            values = runner.infer(feeds, [output_names(k)[2] for k in range(len(chosen))])
        for k, info in enumerate(chosen):  # chosen is in graph order
            count = int(values[output_names(k)[2]])
            if count:
                where = "graph input" if not info.producer else f"output {info.output_index} of node '{info.producer}' ({info.op_type})"
                raise NonFiniteError(
                    f"shard {ref.name}: FP32 tensor '{info.name}' ({where}) holds {count} NaN/inf values; "
                    "expected finite activations (the FP32 model itself fails on this data)"
                )


def shard_stats(
    model_path: str | os.PathLike,
    ref: data.ShardRef,
    batch_size: int | None = None,
    providers: list[str] | None = None,
) -> pa.Table:
    """Statistics of every float tensor of ``model_path`` over one shard (SHARD_SCHEMA).

    Opens a session for this shard alone; to measure many shards use :class:`StatsSession`.
    Slicing (``batch_size`` or a static model batch) gives exactly the statistics of one pass.

    Raises:
        ModelError, DataError, NonFiniteError: see :class:`StatsSession`.
    """
    with StatsSession(model_path, batch_size=batch_size, providers=providers) as session:
        return session.run(ref)


def reduce_stats(tables: Iterable[pa.Table]) -> pa.Table:
    """Fold per-shard tables into one row per tensor (STATS_SCHEMA), in graph order.

    min is the smallest min, max the largest max, max_abs the largest max_abs (``max_shard``: the
    first shard, in input order, where it was seen), nonfinite and samples are sums, shards
    counts the shards that measured the tensor.

    Raises:
        DataError: a table does not follow SHARD_SCHEMA (names the column).
    """
    rows: dict[str, dict] = {}
    for i, table in enumerate(tables):
        table = validate(table, SHARD_SCHEMA, f"shard stats table #{i}")
        for r in table.to_pylist():
            cur = rows.get(r["tensor"])
            if cur is None:
                rows[r["tensor"]] = {
                    **{k: r[k] for k in ("tensor", "producer", "op_type", "output_index", "order", "min", "max", "max_abs", "nonfinite", "samples")},
                    "shards": 1,
                    "max_shard": r["shard"],
                }
                continue
            cur["min"] = min(cur["min"], r["min"])
            cur["max"] = max(cur["max"], r["max"])
            if r["max_abs"] > cur["max_abs"] or (math.isnan(r["max_abs"]) and not math.isnan(cur["max_abs"])):
                cur["max_abs"], cur["max_shard"] = r["max_abs"], r["shard"]
            cur["nonfinite"] += r["nonfinite"]
            cur["samples"] += r["samples"]
            cur["shards"] += 1
    ordered = sorted(rows.values(), key=lambda r: r["order"])
    return pa.Table.from_pylist(ordered, schema=STATS_SCHEMA)


def write_stats_files(tables: list[pa.Table], stats_path: str | os.PathLike, shard_stats_path: str | os.PathLike | None = None) -> pa.Table:
    """Reduce per-shard tables and write them: ``stats_path`` (STATS_SCHEMA) and, when given,
    ``shard_stats_path`` (the shard tables concatenated, SHARD_SCHEMA). Each file is written
    atomically, the per-shard one first. Returns the reduced table.
    """
    reduced = reduce_stats(tables)
    if shard_stats_path is not None:
        write_shard_stats(pa.concat_tables(tables), shard_stats_path)
    write_stats(reduced, stats_path)
    return reduced
