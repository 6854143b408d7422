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


# ------------------------------------------------------------------------------ packed outputs
def _odd_model(path):
    """x[N,8] -> Log (NaN for x < 0, -inf at 0) -> Where(IsNaN, 0, .) ; an empty Slice of x joined
    back; a Relu, a Reshape and a large Tile (sampled with a step > 1)."""
    import onnx
    from onnx import TensorProto as T, helper

    inits = [
        helper.make_tensor("z", T.FLOAT, [], [0.0]),
        helper.make_tensor("s0", T.INT64, [1], [0]), helper.make_tensor("e0", T.INT64, [1], [0]), helper.make_tensor("ax", T.INT64, [1], [1]),
        helper.make_tensor("flat", T.INT64, [2], [-1, 4]), helper.make_tensor("reps", T.INT64, [2], [1, 40000]),
    ]
    nodes = [
        helper.make_node("Log", ["x"], ["l"]),
        helper.make_node("IsNaN", ["l"], ["isnan"]),
        helper.make_node("Where", ["isnan", "z", "l"], ["clean"]),
        helper.make_node("Relu", ["clean"], ["r"]),
        helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["empty"]),
        helper.make_node("Concat", ["x", "empty"], ["joined"], axis=1),
        helper.make_node("Reshape", ["joined", "flat"], ["shaped"]),
        helper.make_node("Tile", ["joined", "reps"], ["big"]),
        helper.make_node("Mul", ["big", "big"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 8])], [helper.make_tensor_value_info("y", T.FLOAT, None), helper.make_tensor_value_info("r", T.FLOAT, None), helper.make_tensor_value_info("shaped", T.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _shard_bytes(model, refs, packed: bool, tmp_path, batch_size=None) -> bytes:
    from fp16guard.stats.collect import StatsSession, write_shard_stats

    session = StatsSession(model, batch_size=batch_size)
    session._packed = packed  # the scalar-output model is the reference
    with session:
        tables = [session.run(ref) for ref in refs]
    out = tmp_path / f"shards-{packed}.parquet"
    write_shard_stats(pa.concat_tables(tables), out)
    return out.read_bytes()


@pytest.mark.parametrize("batch_size", [None, 2])
def test_packed_outputs_give_the_scalar_outputs_figures_bit_for_bit(tmp_path, demo_files, batch_size):
    from fp16guard.io.shards import ShardRef, discover_shards

    model = _odd_model(tmp_path / "odd.onnx")
    rng = np.random.default_rng(3)
    refs = []
    for i in range(4):
        x = (rng.normal(size=(3, 8)) * 10.0 ** rng.integers(-6, 6, size=(3, 8))).astype(np.float32)
        x[0, 0], x[1, 1] = 0.0, -0.0
        np.savez(tmp_path / f"s{i}.npz", x=x)
        refs.append(ShardRef(str(tmp_path / f"s{i}.npz"), str(tmp_path / f"s{i}.npz")))
    assert _shard_bytes(model, refs, True, tmp_path, batch_size) == _shard_bytes(model, refs, False, tmp_path, batch_size)
    demo = discover_shards([demo_files["calib"]])
    assert _shard_bytes(demo_files["model"], demo, True, tmp_path, batch_size) == _shard_bytes(demo_files["model"], demo, False, tmp_path, batch_size)


def test_reductions_over_the_flattened_tensor_equal_those_over_its_axes():
    """onnxruntime reduces over all axes as over one (what the packed model relies on): min, max
    and sum of random tensors of rank 1-4, with NaN, inf and -0.0, bit for bit, on 1 and 2 threads."""
    import onnxruntime as ort
    from onnx import TensorProto as T, helper

    rng = np.random.default_rng(0)
    for rank in (1, 2, 3, 4):
        nodes = [helper.make_node("Reshape", ["x", "m1"], ["f"])]
        outs = []
        for op in ("ReduceMin", "ReduceMax", "ReduceSum"):
            nodes += [helper.make_node(op, ["x"], [op + "_nd"], keepdims=0), helper.make_node(op, ["f"], [op + "_flat"], keepdims=1)]
            outs += [op + "_nd", op + "_flat"]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [None] * rank)], [helper.make_tensor_value_info(o, T.FLOAT, None) for o in outs], [helper.make_tensor("m1", T.INT64, [1], [-1])])
        blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        for threads in (1, 2):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
            for _ in range(60):
                x = (rng.normal(size=tuple(int(v) for v in rng.integers(1, 30, rank))) * 10.0 ** rng.integers(-3, 30)).astype(np.float32)
                for _ in range(int(rng.integers(0, 4))):
                    x.flat[rng.integers(0, x.size)] = rng.choice([np.nan, np.inf, -np.inf, -0.0])
                got = dict(zip(outs, session.run(outs, {"x": x})))
                for op in ("ReduceMin", "ReduceMax", "ReduceSum"):
                    assert np.asarray(got[op + "_nd"]).tobytes() == np.asarray(got[op + "_flat"]).tobytes(), (op, x.shape)


# ------------------------------------------------------------------------------ group sizing
def test_shard_sizes_read_one_header_per_file_size(tmp_path, demo_files, monkeypatch):
    from fp16guard.io import shards as data
    from fp16guard.io.lazy_weights import load_graph_only
    from fp16guard.io.model import input_specs, normalize_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.stats import groups

    specs = input_specs(normalize_model(load_graph_only(demo_files["model"])))
    with np.load(discover_shards([demo_files["calib"]])[0].path) as z:
        first = {k: z[k] for k in z.files}
    for i, samples in enumerate([1, 1, 3, 1, 3, 2]):
        np.savez(tmp_path / f"s{i}.npz", **{k: np.repeat(v[:1], samples, axis=0) for k, v in first.items()})
    (tmp_path / "s6.npz").write_bytes(b"not a zip")
    refs = discover_shards([str(tmp_path)])
    peeked = []
    real_peek = data.peek_shard
    monkeypatch.setattr(data, "peek_shard", lambda ref: (peeked.append(ref.name), real_peek(ref))[1])
    got = groups.shard_sizes(refs, specs)
    assert len(peeked) == 4, "one header per distinct byte size, and the unreadable file"
    monkeypatch.setattr(data, "peek_shard", real_peek)
    assert got == [groups.shard_size(ref, specs) for ref in refs]
    assert [s.samples for s in got] == [1, 1, 3, 1, 3, 2, 1]


# ------------------------------------------------------------------------------ bulk cache entries
def test_entries_written_in_bulk_are_prefect_entries_and_refused_when_tampered(prefect_api_url, tmp_path):
    """An entry written by tasks.shard_cache is read back by Prefect's own result store (the
    per-shard task sees it), and a payload changed behind its record is a miss for both readers."""
    import json

    from tasks.caching import DIGEST_FIELD, TaskCache
    from tasks.shard_cache import entries_for
    from tasks.stats import STATS_CACHE_EXCLUDE, shard_stats_task

    store = str(tmp_path / "store")
    entries = entries_for(store, "stats", shard_stats_task, STATS_CACHE_EXCLUDE)
    key = entries.key({"model_sha256": "a" * 64, "shard_sha256": "b" * 64, "code": "c" * 64})
    assert key == entries.cache.key({"model_path": "m.onnx", "model_sha256": "a" * 64, "shard_sha256": "b" * 64, "code": "c" * 64})
    value = {"shard": "s.npz", "table": pa.table({"x": [1.0, -0.0, 2.5]}), "computed_by": "run-1"}
    assert entries.get(key) == (False, None)
    entries.put(key, value)
    for found, got in (entries.get(key), entries.cache.get(key)):
        assert found and got["computed_by"] == "run-1" and got["table"].equals(value["table"])
    record = json.loads((tmp_path / "store" / ".cache" / "stats" / "records" / key).read_text())
    assert record["serializer"] == {"type": "fp16guard-json"} and len(record[DIGEST_FIELD]) == 64
    payload = tmp_path / "store" / ".cache" / "stats" / "results" / record["storage_key"]
    payload.write_bytes(payload.read_bytes().replace(b"run-1", b"run-2"))
    assert entries.get(key) == (False, None)
    fresh = TaskCache(store, "stats", shard_stats_task, STATS_CACHE_EXCLUDE)  # Prefect's store keeps what it read in memory
    assert fresh.get(key) == (False, None)


def test_graph_loads_while_something_else_still_holds_a_view_of_the_file(demo_files, monkeypatch):
    """A Dask worker's profiler samples thread frames and can hold load_graph_only's view of the
    mapped model a moment longer (seen in a 2-worker flow: a valid model refused with
    "BufferError: cannot close exported pointers exist"); the model still loads."""
    from fp16guard.io import lazy_weights

    held = []
    real = lazy_weights._rewrite_model
    monkeypatch.setattr(lazy_weights, "_rewrite_model", lambda buf, size, location: (held.append(buf[0:1]), real(buf, size, location))[1])
    model = lazy_weights.load_graph_only(demo_files["model"])
    assert held and model.graph.node
