"""Per-shard activation statistics, measured inside the graph, and their reduction over shards.

:class:`StatsSession` opens the instrumented model once and measures shard after shard;
:func:`shard_stats` measures one shard; :func:`reduce_stats` folds per-shard tables into one row
per tensor. Memory is one shard's feeds plus the model: statistics are scalars.

Two kinds of tensor are measured differently:

* **constant** tensors (no dependence on any graph input: ConstantOfShape weights, transposed or
  dequantised weights, shape arithmetic; :func:`fp16guard.graph.instrument.constant_tensors`)
  are measured once, when the session opens, by a small model of their own that runs without
  feeds and is closed before the per-shard model is created. Every shard's table repeats those
  figures, so the tables keep one row per float tensor;
* every other float tensor is measured on every slice by the per-shard model.

Non-finite values (docs/NUMERICS.md): NaN/inf in an FP32 tensor that is *not* a graph output
(TensorFlow's ``div_no_nan``, an additive ``-inf`` attention mask before Softmax) is data: it is
counted per tensor and shard (``nonfinite``) and the planner keeps the nodes touching it FP32.
Only NaN/inf in a graph output of the FP32 model is a data error (:class:`NonFiniteError`).

Every session here runs on :data:`STATS_THREADS` (one) onnxruntime intra-op thread, whatever the
caller asks, so the figures do not depend on the worker count or the host's cores (issue 18 item
4). The cause is onnxruntime's own kernels, not the instrumentation: an elementwise op split over
``t`` threads computes the elements at each chunk's end by a scalar path whose result can differ
by an ulp from the vectorised one (measured with onnxruntime 1.32 on the 2-core AMD EPYC VM,
2026-12-07: ``Log`` and ``Softplus`` differ between 1 and 2 threads in 1-4 elements of ~100k;
basic-pitch's ``normalized_log`` Log does, so its ``subnormal_abs_sum`` differed), and every
statistic downstream of such a tensor may follow. The reductions themselves were not split (a
``ReduceSum`` over all axes of up to 10M elements gave the same bits on 1, 2 and 4 threads), and
on one thread no kernel is split at all. Parallelism comes from measuring shards at once
(``tasks/runners.py``), which costs less CPU per shard than intra-op threads.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import pyarrow as pa

from fp16guard.io import shards as data
from fp16guard.errors import NonFiniteError
from fp16guard.graph.instrument import (
    PACKED_FIGURES,
    PACKED_ORDER,
    PACKED_SIZES,
    SAMPLE,
    TensorInfo,
    constant_groups,
    constant_model,
    constant_tensors,
    float_tensors,
    instrument,
    instrument_packed,
    output_names,
    packed_supported,
    underflow_names,
    underflow_supported,
)
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

__all__ = [
    "STATS_THREADS",
    "StatsSession",
    "shard_stats",
    "reduce_stats",
    "write_stats_files",
    "SHARD_SCHEMA",
    "STATS_SCHEMA",
    "read_stats",
    "read_shard_stats",
    "write_stats",
    "write_shard_stats",
]

#: onnxruntime intra-op threads of every statistics session (per-shard, constants, exact counts):
#: the figures are defined on one thread, so they cannot depend on the worker count or the host.
STATS_THREADS = 1
#: Underflow columns, in the order the per-slice arrays are kept.
_UNDERFLOW_COLUMNS = ("nonzero", "subnormal", "min_nonzero_abs", "examined", "abs_sum", "subnormal_abs_sum")


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
        intra_op_threads: ignored (kept so existing callers still work): every session runs on
            :data:`STATS_THREADS` threads, since onnxruntime's elementwise kernels give results
            that depend on the thread count (see the module docstring). Measure shards at once
            (several sessions) for parallelism.

    Example:
        >>> with StatsSession("model.onnx") as session:
        ...     tables = [session.run(ref) for ref in shards]
    """

    def __init__(self, model_path: str | os.PathLike, batch_size: int | None = None, providers: list[str] | None = None, intra_op_threads: int = 0):
        from fp16guard.io.lazy_weights import load_graph_only

        self.model_path = Path(model_path)
        self.batch_size = batch_size
        self.providers = providers
        del intra_op_threads  # see the docstring: the figures are defined on STATS_THREADS
        self.intra_op_threads = STATS_THREADS
        model = normalize_model(load_graph_only(self.model_path))
        self.specs = input_specs(model)
        self.tensors: list[TensorInfo] = float_tensors(model)
        const = constant_tensors(model)
        #: indices into ``tensors``: measured once per session / on every slice
        self._const = [k for k, t in enumerate(self.tensors) if t.name in const]
        self._varying = [k for k, t in enumerate(self.tensors) if t.name not in const]
        self._outputs = {o.name for o in model.graph.output}
        self._underflow = underflow_supported(model)
        self._packed = packed_supported(model)
        self._model = model  # graph only (weights are references): small
        self._runner = None
        self._open = False
        self._const_figures: dict[str, np.ndarray] | None = None
        self._fetch_names: dict[int, list[str]] = {}
        self._columns: dict[str, pa.Array] | None = None  # the per-tensor columns every table repeats

    def __enter__(self) -> "StatsSession":
        from fp16guard.runners.onnxrt import OnnxRuntimeRunner

        if self._const and self._const_figures is None:
            self._const_figures = self._measure_constants()
        self._open = True
        if not self._varying:  # every float tensor is constant: nothing to run per shard
            return self
        chosen = [self.tensors[k] for k in self._varying]
        self._runner = OnnxRuntimeRunner(
            # Two outputs instead of nine per tensor where the opset allows (same figures).
            instrument_packed(self._model, chosen) if self._packed else instrument(self._model, chosen),
            providers=self.providers,
            external_data_dir=self.model_path.parent,
            # onnxruntime's default order runs every reduction after the last layer, keeping
            # each measured activation alive until then; priority-based order runs a reduction
            # right after its producer (measured on VGG-19: inference 1.35x -> ~1.0x a plain pass).
            execution_order="priority_based",
            cpu_arena=False,  # the arena fragments around the many scalar outputs (runners.onnxrt)
            intra_op_threads=STATS_THREADS,  # figures independent of the thread count
        )
        self._runner.activate()
        return self

    def __exit__(self, *exc) -> None:
        if self._runner is not None:
            self._runner.close()
        self._runner = None
        self._open = False

    @property
    def providers_used(self) -> list[str]:
        """The execution providers onnxruntime uses for this session (empty when not open)."""
        return self._runner.providers if self._runner is not None else []

    def _measure_constants(self) -> dict[str, np.ndarray]:
        """Figures of the constant tensors (arrays in ``self._const`` order), measured once.

        One feed-less model per group of constants that share computation
        (:func:`~fp16guard.graph.instrument.constant_groups`), run before the per-shard session
        exists and without graph optimisations, so memory holds one group's values at a time.
        """
        from fp16guard.runners.onnxrt import OnnxRuntimeRunner

        position = {self.tensors[k].name: i for i, k in enumerate(self._const)}
        n = len(self._const)
        figures: dict[str, np.ndarray] | None = None
        producers = {o: node for node in self._model.graph.node for o in node.output if o}
        for group in constant_groups(self._model, [self.tensors[k].name for k in self._const]):
            chosen = [self.tensors[self._const[position[name]]] for name in group]
            filled = _constant_of_shape_figures(producers.get(group[0]), self._model, self._underflow) if len(group) == 1 else None
            if filled is not None:  # known by definition: no need to allocate it
                if figures is None:
                    figures = {key: np.full(n, np.nan) for key in filled}
                for key, value in filled.items():
                    figures[key][position[group[0]]] = value
                continue
            with OnnxRuntimeRunner(
                constant_model(self._model, chosen),
                providers=self.providers,
                external_data_dir=self.model_path.parent,
                optimization="disable",  # see constant_model: folding it all at creation costs GiBs
                execution_order="priority_based",
                cpu_arena=False,
                intra_op_threads=STATS_THREADS,
            ) as runner:
                values = runner.infer({}, self._fetch(len(chosen)))
            part = self._figures(values, len(chosen))
            suspect = ~np.isfinite(part["flag"]) | np.isnan(part["min"]) | np.isnan(part["max"]) | (part["min"] == -np.inf) | (part["max"] == np.inf)
            counts = self._count_nonfinite(chosen, {}, np.flatnonzero(suspect)) if suspect.any() else {}
            for i, count in counts.items():
                if chosen[i].name in self._outputs:
                    raise NonFiniteError(f"FP32 output '{chosen[i].name}' is a constant holding {count} NaN/inf values; expected finite outputs (the FP32 model itself fails, whatever the data)")
            part["nonfinite"] = np.array([counts.get(i, 0) for i in range(len(chosen))], dtype=np.float64)
            if figures is None:
                figures = {key: np.full(n, np.nan) for key in part}
            rows = [position[name] for name in group]
            for key, arr in part.items():
                figures[key][rows] = arr
        assert figures is not None
        figures["nonfinite"] = figures["nonfinite"].astype(np.int64)
        return figures

    def _shard_fetch(self, n: int) -> list[str]:
        """Output names of the per-shard model of ``n`` tensors."""
        return [PACKED_FIGURES, PACKED_SIZES] if self._packed else self._fetch(n)

    def _shard_figures(self, values: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """:meth:`_figures` of the per-shard model's outputs (packed or not)."""
        if not self._packed:
            return self._figures(values, n)
        rows = np.asarray(values[PACKED_FIGURES], dtype=np.float64).reshape(len(PACKED_ORDER), n)
        raw = dict(zip(PACKED_ORDER, rows))
        sizes = np.asarray(values[PACKED_SIZES], dtype=np.int64)
        step = 2 * (sizes // (2 * SAMPLE)) + 1
        examined = ((sizes + step - 1) // step).astype(np.float64)  # len(range(0, size, step)): the Slice's length
        return {
            "min": raw["min"],
            "max": raw["max"],
            "flag": raw["flag"],
            "nonzero": raw["nonzero"],
            "subnormal": raw["below"] - (examined - raw["nonzero"]),  # |x| < T minus the zeros
            "min_nonzero_abs": raw["min_nonzero_abs"],
            "examined": examined,
            "abs_sum": raw["abs_sum"],
            "subnormal_abs_sum": raw["below_abs_sum"],  # zeros add nothing
        }

    def _fetch(self, n: int) -> list[str]:
        """Output names of the instrumented model of ``n`` tensors, figure by figure (every
        tensor's min, then every max, every flag, then each underflow figure), so one array of
        the fetched scalars reshapes to one row per figure. Made once per ``n``."""
        names = self._fetch_names.get(n)
        if names is None:
            names = [output_names(k)[i] for i in range(3) for k in range(n)]
            if self._underflow:
                names += [underflow_names(k)[i] for i in range(6) for k in range(n)]
            self._fetch_names[n] = names
        return names

    def _figures(self, values: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Per-tensor arrays (float64) of one inference's scalars: min, max, flag, and the
        underflow figures (NaN when not measured)."""
        # One conversion of every scalar (float32 and int64 are exact in float64), not one per figure.
        rows = np.array([values[name] for name in self._fetch(n)], dtype=np.float64).reshape(-1, n)
        out = {"min": rows[0], "max": rows[1], "flag": rows[2]}
        if not self._underflow:
            for key in _UNDERFLOW_COLUMNS:
                out[key] = np.full(n, np.nan)
            return out
        nonzero, below, below_abs_sum, abs_sum, min_nonzero_abs, examined = rows[3:9]
        out["nonzero"] = nonzero
        out["subnormal"] = below - (examined - nonzero)  # |x| < T minus the zeros
        out["min_nonzero_abs"] = min_nonzero_abs
        out["examined"] = examined
        out["abs_sum"] = abs_sum
        out["subnormal_abs_sum"] = below_abs_sum  # zeros add nothing
        return out

    def run(self, ref: data.ShardRef) -> pa.Table:
        """Measure one shard. Returns a SHARD_SCHEMA table, one row per tensor in graph order.

        Raises:
            DataError: the shard does not fit the model (see ``data.prepare_feeds``).
            NonFiniteError: a graph output of the FP32 model holds NaN/inf on this shard (names
                the shard and the output). NaN/inf in other tensors is counted, not raised.
        """
        if not self._open:
            raise RuntimeError("StatsSession is not open; use it as a context manager")
        # The digest of the very bytes measured (a URL's object is fetched once and hashed as read).
        arrays, digest = data.read_shard(ref)
        feeds = data.prepare_feeds(ref, arrays, self.specs)
        samples = data.batch_count(feeds)
        size = data.slice_size(self.specs, samples, self.batch_size)
        n = len(self._varying)
        chosen = [self.tensors[k] for k in self._varying]
        lo = np.full(n, np.inf)
        hi = np.full(n, -np.inf)
        bad = np.zeros(n, dtype=np.int64)
        under = {key: np.zeros(n) for key in _UNDERFLOW_COLUMNS}
        under["min_nonzero_abs"] = np.full(n, np.inf)
        fetch = self._shard_fetch(n)
        for piece in data.iter_slices(feeds, size):
            if self._runner is None:
                break
            with data.shard_context(ref):
                values = self._runner.infer(piece, fetch)
            fig = self._shard_figures(values, n)
            mins, maxs = fig["min"], fig["max"]
            # +inf min / -inf max is an empty tensor, not a non-finite one.
            suspect = ~np.isfinite(fig["flag"]) | np.isnan(mins) | np.isnan(maxs) | (mins == -np.inf) | (maxs == np.inf)
            counts = np.zeros(n, dtype=np.int64)
            if suspect.any():
                found = self._count_nonfinite(chosen, piece, np.flatnonzero(suspect))
                self._check_outputs(ref, chosen, found)
                for i, c in found.items():
                    counts[i] = c
            bad += counts
            lo = np.fmin(lo, mins) if not np.isnan(mins).any() else np.where(np.isnan(mins), np.nan, np.minimum(lo, mins))
            hi = np.fmax(hi, maxs) if not np.isnan(maxs).any() else np.where(np.isnan(maxs), np.nan, np.maximum(hi, maxs))
            tainted = counts > 0 if suspect.any() else None
            for key in _UNDERFLOW_COLUMNS:
                # Figures of a tensor holding NaN/inf on this slice cannot be trusted: unknown.
                v = fig[key] if tainted is None else np.where(tainted, np.nan, fig[key])
                under[key] = np.minimum(under[key], v) if key == "min_nonzero_abs" else under[key] + v
        max_abs = np.maximum(-lo, hi)
        max_abs = np.where(np.isinf(lo) & np.isinf(hi) & (lo > 0) & (hi < 0), 0.0, max_abs)  # tensors empty on every sample
        per_tensor = {
            "min": lo,
            "max": hi,
            "max_abs": max_abs,
            "nonfinite": bad,
            **under,
        }
        if not self._const:  # every tensor varies, in graph order: the arrays are the columns
            cols = per_tensor
        else:
            cols = {key: np.empty(len(self.tensors), dtype=arr.dtype) for key, arr in per_tensor.items()}
            for key, arr in per_tensor.items():
                cols[key][self._varying] = arr
            for key, arr in self._const_columns().items():
                cols[key][self._const] = arr
        total = len(self.tensors)

        def nullable(arr: np.ndarray, integer: bool) -> pa.Array:
            mask = np.isnan(arr)
            return pa.array(np.where(mask, 0, arr).astype(np.int64) if integer else arr, mask=mask)

        fixed = self._tensor_columns()
        columns = {
            "shard": pa.array([ref.name] * total, pa.string()),
            "shard_sha256": pa.array([digest] * total, pa.string()),
            **fixed,
            "min": pa.array(cols["min"], pa.float64()),
            "max": pa.array(cols["max"], pa.float64()),
            "max_abs": pa.array(cols["max_abs"], pa.float64()),
            "nonfinite": pa.array(cols["nonfinite"], pa.int64()),
            "nonzero": nullable(cols["nonzero"], True),
            "subnormal": nullable(cols["subnormal"], True),
            "min_nonzero_abs": nullable(cols["min_nonzero_abs"], False),
            "examined": nullable(cols["examined"], True),
            "abs_sum": nullable(cols["abs_sum"], False),
            "subnormal_abs_sum": nullable(cols["subnormal_abs_sum"], False),
            "samples": pa.array(np.full(total, samples, dtype=np.int64), pa.int64()),
        }
        return pa.Table.from_arrays([columns[name] for name in SHARD_SCHEMA.names], schema=SHARD_SCHEMA)

    def _tensor_columns(self) -> dict[str, pa.Array]:
        """The columns that name the tensors (the same in every table of this session), built once."""
        if self._columns is None:
            self._columns = {
                "tensor": pa.array([t.name for t in self.tensors], pa.string()),
                "producer": pa.array([t.producer for t in self.tensors], pa.string()),
                "op_type": pa.array([t.op_type for t in self.tensors], pa.string()),
                "output_index": pa.array([t.output_index for t in self.tensors], pa.int32()),
                "order": pa.array([t.order for t in self.tensors], pa.int32()),
            }
        return self._columns

    def _const_columns(self) -> dict[str, np.ndarray]:
        """Table columns of the constant tensors (measured once per session), in ``_const`` order."""
        const = self._const_figures
        cmax = np.maximum(-const["min"], const["max"])
        cmax = np.where(np.isinf(const["min"]) & np.isinf(const["max"]) & (const["min"] > 0), 0.0, cmax)
        out = {"min": const["min"], "max": const["max"], "max_abs": cmax, "nonfinite": const["nonfinite"]}
        for key in _UNDERFLOW_COLUMNS:
            out[key] = np.where(const["nonfinite"] > 0, np.nan, const[key])
        return out

    def _check_outputs(self, ref: data.ShardRef, chosen: list[TensorInfo], counts: dict[int, int]) -> None:
        """Raise NonFiniteError when a graph output of the FP32 model holds NaN/inf."""
        first = min(counts, key=lambda i: chosen[i].order, default=None)
        for i in sorted(counts):
            info = chosen[i]
            if counts[i] and info.name in self._outputs:
                origin = chosen[first]
                where = "graph input" if not origin.producer else f"output {origin.output_index} of node '{origin.producer}' ({origin.op_type})"
                raise NonFiniteError(
                    f"shard {ref.name}: FP32 output '{info.name}' holds {counts[i]} NaN/inf values, first seen in '{origin.name}' ({where}); "
                    "expected finite outputs (the FP32 model itself fails on this data)"
                )

    def _count_nonfinite(self, chosen: list[TensorInfo], feeds: dict[str, np.ndarray], suspects: np.ndarray) -> dict[int, int]:
        """Exact NaN/inf counts of the suspected tensors (indices into ``chosen``); zero counts
        are left out.

        A flag can be a false alarm (a sum of huge finite values overflowing float32): then the
        count is 0 and the statistics stand. Runs a second, costlier model (full-size boolean
        temporaries), only for this slice.
        """
        from fp16guard.runners.onnxrt import OnnxRuntimeRunner

        picked = [chosen[k] for k in suspects]
        # No feeds: the constant tensors, measured by a model of their own.
        counted = instrument(self._model, picked, exact_counts=True) if feeds else constant_model(self._model, picked, exact_counts=True)
        optimization = "all" if feeds else "disable"  # constants: see constant_model
        with OnnxRuntimeRunner(counted, providers=self.providers, external_data_dir=self.model_path.parent, optimization=optimization, intra_op_threads=STATS_THREADS) as runner:
            values = runner.infer(feeds, [output_names(j)[2] for j in range(len(picked))])
        found = {int(k): int(values[output_names(j)[2]]) for j, k in enumerate(suspects)}
        return {k: c for k, c in found.items() if c}


def _constant_of_shape_figures(node, model, underflow: bool) -> dict[str, float] | None:
    """Figures of a ConstantOfShape output from its definition (every element is the attribute's
    value), without computing it; None when ``node`` is something else or its shape is not an
    embedded initializer. The sampled figures count the elements the instrumented model would
    examine, so both ways give the same table."""
    from onnx import numpy_helper

    from fp16guard.graph.instrument import FP16_MIN_NORMAL, SAMPLE

    if node is None or node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx") or not node.input:
        return None
    shape = next((t for t in model.graph.initializer if t.name == node.input[0]), None)
    if shape is None or shape.data_location == onnx.TensorProto.EXTERNAL:
        return None
    dims = numpy_helper.to_array(shape).astype(np.int64).reshape(-1)
    value = 0.0
    for attr in node.attribute:
        if attr.name == "value":
            value = float(numpy_helper.to_array(attr.t).reshape(-1)[0])
    count = int(np.prod(dims)) if dims.size else 1
    empty = count == 0
    out = {
        "min": np.inf if empty else value,
        "max": -np.inf if empty else value,
        "flag": value * count if math.isfinite(value) else np.nan,  # what ReduceSum would give
        "nonfinite": 0 if empty or math.isfinite(value) else count,
    }
    for key in _UNDERFLOW_COLUMNS:
        out[key] = np.nan
    if underflow and math.isfinite(value):
        examined = len(range(0, count, 2 * (count // (2 * SAMPLE)) + 1))
        a = abs(value)
        small = 0 < a < FP16_MIN_NORMAL
        out.update(
            nonzero=examined if a > 0 else 0,
            subnormal=examined if small else 0,
            min_nonzero_abs=a if a > 0 and examined else np.inf,
            examined=examined,
            abs_sum=a * examined,
            subnormal_abs_sum=a * examined if small else 0.0,
        )
    return out


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
    first shard, in input order, where it was seen), nonfinite and samples are sums
    (``nonfinite_shard``: the first shard with NaN/inf, "" if none), shards counts the shards that
    measured the tensor. Underflow counts and sums add up and ``min_nonzero_abs`` is the
    smallest; any of them is null when a shard did not measure it (null = unknown).

    Raises:
        DataError: a table does not follow SHARD_SCHEMA (names the column).
    """
    tables = [validate(table, SHARD_SCHEMA, f"shard stats table #{i}") for i, table in enumerate(tables)]
    fast = _reduce_aligned(tables)
    return fast if fast is not None else _reduce_rows(tables)


def _reduce_rows(tables: list[pa.Table]) -> pa.Table:
    """:func:`reduce_stats` row by row, for validated tables of any tensors in any order (the
    reference fold that :func:`_reduce_aligned` reproduces)."""
    rows: dict[str, dict] = {}
    for table in tables:
        for r in table.to_pylist():
            cur = rows.get(r["tensor"])
            if cur is None:
                rows[r["tensor"]] = {
                    **{k: r[k] for k in ("tensor", "producer", "op_type", "output_index", "order", "min", "max", "max_abs", "nonfinite", "samples")},
                    **{k: r[k] for k in _UNDERFLOW_COLUMNS},
                    "shards": 1,
                    "max_shard": r["shard"],
                    "nonfinite_shard": r["shard"] if r["nonfinite"] else "",
                }
                continue
            cur["min"] = min(cur["min"], r["min"])
            cur["max"] = max(cur["max"], r["max"])
            if r["max_abs"] > cur["max_abs"] or (math.isnan(r["max_abs"]) and not math.isnan(cur["max_abs"])):
                cur["max_abs"], cur["max_shard"] = r["max_abs"], r["shard"]
            if r["nonfinite"] and not cur["nonfinite"]:
                cur["nonfinite_shard"] = r["shard"]
            cur["nonfinite"] += r["nonfinite"]
            cur["samples"] += r["samples"]
            cur["shards"] += 1
            for key in _UNDERFLOW_COLUMNS:
                if cur[key] is None or r[key] is None:
                    cur[key] = None
                else:
                    cur[key] = min(cur[key], r[key]) if key == "min_nonzero_abs" else cur[key] + r[key]
    ordered = sorted(rows.values(), key=lambda r: r["order"])
    return pa.Table.from_pylist(ordered, schema=STATS_SCHEMA)


def _reduce_aligned(tables: list[pa.Table]) -> pa.Table | None:
    """:func:`reduce_stats` of tables that all list the same tensors in the same order (every
    table of one model: the usual case), as whole-column array operations; None when they do not
    (the row-by-row fold then runs).

    Gives exactly the row-by-row fold's values: min/max keep the first shard's value when it is
    NaN and otherwise the first smallest/largest value (a later equal value, e.g. -0.0 after 0.0,
    does not replace it), max_abs takes the first NaN or else the first largest value (its
    shard is ``max_shard``), float sums add shard by shard in input order (a cumulative sum, not
    NumPy's pairwise sum), and a null underflow figure in any shard makes the result null.
    Measured on 3000 one-sample shards of a 28-tensor model: the row-by-row fold took ~1 s.
    """
    if not tables:
        return None
    names = tables[0].column("tensor")
    count = len(names)
    if count == 0 or len(set(names.to_pylist())) != count or any(t.num_rows != count or not t.column("tensor").equals(names) for t in tables[1:]):
        return None
    whole = pa.concat_tables(tables).combine_chunks()  # one chunk per column: array operations, not one per shard
    shards = len(tables)

    def grid(column: str, fill=None) -> np.ndarray:
        col = whole.column(column)
        if fill is not None:
            col = col.fill_null(fill)
        return col.to_numpy().reshape(shards, count)

    def nulls(column: str) -> np.ndarray:
        return whole.column(column).is_null().to_numpy(zero_copy_only=False).reshape(shards, count)

    cols = np.arange(count)
    shard_names = np.array(whole.column("shard").to_pylist(), dtype=object).reshape(shards, count)

    def first_extreme(values: np.ndarray, smallest: bool) -> np.ndarray:
        # Python's min/max fold: a NaN first value stays; later NaNs never replace; ties keep the first.
        stand_in = np.inf if smallest else -np.inf
        filled = np.where(np.isnan(values), stand_in, values)
        picked = values[np.argmin(filled, axis=0) if smallest else np.argmax(filled, axis=0), cols]
        return np.where(np.isnan(values[0]), values[0], picked)

    lo, hi, ab = grid("min"), grid("max"), grid("max_abs")
    nan_ab = np.isnan(ab)
    where_ab = np.where(nan_ab.any(axis=0), np.argmax(nan_ab, axis=0), np.argmax(np.where(nan_ab, -np.inf, ab), axis=0))
    bad = grid("nonfinite")
    flagged = bad > 0
    first_bad = np.argmax(flagged, axis=0)
    out: dict[str, object] = {
        "tensor": names,
        "producer": tables[0].column("producer"),
        "op_type": tables[0].column("op_type"),
        "output_index": tables[0].column("output_index"),
        "order": tables[0].column("order"),
        "min": first_extreme(lo, True),
        "max": first_extreme(hi, False),
        "max_abs": ab[where_ab, cols],
        "nonfinite": bad.sum(axis=0),
    }
    for key in _UNDERFLOW_COLUMNS:
        missing = nulls(key).any(axis=0)
        if key == "min_nonzero_abs":
            values = grid(key, 0.0)
            value = values[np.argmin(values, axis=0), cols]
        elif key in ("abs_sum", "subnormal_abs_sum"):
            value = np.cumsum(grid(key, 0.0), axis=0)[-1]  # sequential, in shard order
        else:
            value = grid(key, 0).sum(axis=0)
        out[key] = pa.array(value, STATS_SCHEMA.field(key).type, mask=missing)
    out["shards"] = np.full(count, shards, dtype=np.int64)
    out["samples"] = grid("samples").sum(axis=0)
    out["max_shard"] = pa.array(shard_names[where_ab, cols].tolist(), pa.string())
    out["nonfinite_shard"] = pa.array(np.where(flagged.any(axis=0), shard_names[first_bad, cols], "").tolist(), pa.string())
    for key in ("min", "max", "max_abs", "nonfinite", "shards", "samples"):
        out[key] = pa.array(out[key], STATS_SCHEMA.field(key).type)
    table = pa.Table.from_arrays([out[name] for name in STATS_SCHEMA.names], schema=STATS_SCHEMA)
    order = np.argsort(table.column("order").to_numpy(), kind="stable")  # graph order; ties keep their order, as sorted() does
    return table.take(order)


def write_stats_files(tables: list[pa.Table], stats_path: str | os.PathLike, shard_stats_path: str | os.PathLike | None = None) -> pa.Table:
    """Reduce per-shard tables and write them: ``stats_path`` (STATS_SCHEMA) and, when given,
    ``shard_stats_path`` (the shard tables concatenated, SHARD_SCHEMA). Each file is written
    atomically, the per-shard one first. Returns the reduced table.
    """
    reduced = reduce_stats(tables)
    if shard_stats_path is not None:
        # One chunk per column: Parquet's writer takes ~1 ms per chunk (3000 shards: seconds); same bytes.
        write_shard_stats(pa.concat_tables(tables).combine_chunks(), shard_stats_path)
    write_stats(reduced, stats_path)
    return reduced
