"""Per-shard statistics and their reduction: real onnxruntime on tiny models, numpy as reference."""

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.io.shards import ShardRef
from fp16guard.errors import DataError, ModelError, NonFiniteError
from fp16guard.stats.collect import (
    SHARD_SCHEMA,
    STATS_SCHEMA,
    StatsSession,
    read_shard_stats,
    read_stats,
    reduce_stats,
    shard_stats,
    write_shard_stats,
    write_stats,
)
from fp16guard.io.lazy_weights import load_graph_only

F = TensorProto.FLOAT
W = np.linspace(-40, 40, 16 * 32, dtype=np.float32).reshape(16, 32)  # 2 KiB: stored as a file reference


def _save(tmp_path, batch="N", external=False, ir3=False, name="m.onnx"):
    """x[batch,16] -> MatMul(W) -> Relu -> ReduceSum-free Mul by itself -> y; nodes unnamed."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"]),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Mul", ["r", "r"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, [batch, 16])] + ([helper.make_tensor_value_info("w", F, [16, 32])] if ir3 else []),
        [helper.make_tensor_value_info("y", F, [batch, 32])],
        [numpy_helper.from_array(W, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7 if ir3 else 17)])
    if ir3:
        model.ir_version = 3
    path = tmp_path / name
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location="m.weights", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def _shard(tmp_path, name, samples, seed, scale=1.0):
    x = (np.random.default_rng(seed).normal(size=(samples, 16)) * scale).astype(np.float32)
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x)
    return ShardRef(str(path), str(path)), x


def _expected(x):
    a = x @ W
    r = np.maximum(a, 0)
    return {"x": x, "a": a, "r": r, "y": r * r}


def _check(table, xs):
    ref = _expected(np.concatenate(xs))
    rows = {r["tensor"]: r for r in table.to_pylist()}
    assert list(rows) == ["x", "a", "r", "y"]
    for name, arr in ref.items():
        assert rows[name]["min"] == pytest.approx(float(arr.min()), rel=1e-5, abs=1e-4), name
        assert rows[name]["max"] == pytest.approx(float(arr.max()), rel=1e-5, abs=1e-4), name
        assert rows[name]["max_abs"] == pytest.approx(float(np.abs(arr).max()), rel=1e-5, abs=1e-4), name
        assert rows[name]["nonfinite"] == 0


def test_shard_stats_match_numpy_and_name_unnamed_nodes(tmp_path):
    model = _save(tmp_path)
    ref, x = _shard(tmp_path, "s0", 5, 0)
    table = shard_stats(model, ref)
    assert table.schema == SHARD_SCHEMA
    _check(table, [x])
    rows = table.to_pylist()
    assert [r["producer"] for r in rows] == ["", "MatMul_0", "Relu_1", "Mul_2"]
    assert {r["samples"] for r in rows} == {5} and {r["shard"] for r in rows} == {ref.name}
    assert len(rows[0]["shard_sha256"]) == 64


def test_slices_give_exactly_the_same_statistics(tmp_path):
    model = _save(tmp_path)
    ref, _ = _shard(tmp_path, "s0", 7, 1)
    whole = shard_stats(model, ref)
    sums = ["abs_sum", "subnormal_abs_sum"]  # float sums: the order of addition differs
    for size in (1, 2, 3):
        sliced = shard_stats(model, ref, batch_size=size)
        assert sliced.drop(sums).equals(whole.drop(sums))
        for col in sums:
            np.testing.assert_allclose(sliced[col].to_numpy(), whole[col].to_numpy(), rtol=1e-5)


def test_static_batch_smaller_than_the_shard_runs_in_slices(tmp_path):
    model = _save(tmp_path, batch=1)
    ref, x = _shard(tmp_path, "s0", 3, 2)
    _check(shard_stats(model, ref), [x])


def test_external_data_and_ir3_models(tmp_path):
    ref, x = _shard(tmp_path, "s0", 4, 3)
    for kwargs in ({"external": True}, {"ir3": True}):
        sub = tmp_path / next(iter(kwargs))
        sub.mkdir()
        _check(shard_stats(_save(sub, **kwargs), ref), [x])


def test_weights_are_references_into_the_model_file(tmp_path):
    model = load_graph_only(_save(tmp_path))
    (w,) = model.graph.initializer
    assert w.data_location == TensorProto.EXTERNAL and not w.raw_data
    refs = {e.key: e.value for e in w.external_data}
    blob = (tmp_path / "m.onnx").read_bytes()
    start, length = int(refs["offset"]), int(refs["length"])
    assert refs["location"] == "m.onnx" and length == W.nbytes
    np.testing.assert_array_equal(np.frombuffer(blob[start : start + length], np.float32).reshape(16, 32), W)


def test_corrupt_model_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(ModelError):
        StatsSession(bad)
    with pytest.raises(ModelError):
        StatsSession(tmp_path / "missing.onnx")


def test_session_runs_shards_of_different_batch_sizes_and_reduces(tmp_path):
    model = _save(tmp_path)
    r0, x0 = _shard(tmp_path, "s0", 2, 4)
    r1, x1 = _shard(tmp_path, "s1", 5, 5, scale=3.0)  # larger values: the max is seen here
    with StatsSession(model) as session:
        tables = [session.run(r0), session.run(r1)]
    reduced = reduce_stats(tables)
    assert reduced.schema == STATS_SCHEMA
    _check(reduced, [x0, x1])
    rows = reduced.to_pylist()
    assert {r["shards"] for r in rows} == {2} and {r["samples"] for r in rows} == {7}
    assert rows[1]["max_shard"] == r1.name
    assert [r["order"] for r in rows] == [0, 1, 2, 3]


def test_nan_in_an_output_names_shard_output_and_first_tensor(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["l"], name="log"), helper.make_node("Sqrt", ["l"], ["s"], name="sqrt")],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 3])],
        [helper.make_tensor_value_info("s", F, ["N", 3])],
    )
    path = tmp_path / "nan.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    good = tmp_path / "good.npz"
    np.savez(good, x=np.full((2, 3), 5.0, np.float32))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.array([[5.0, 0.0, 0.5], [1.0, 2.0, 3.0]], np.float32))  # log(0) = -inf, log(0.5) < 0
    with StatsSession(path) as session:
        session.run(ShardRef(str(good), str(good)))
        with pytest.raises(NonFiniteError, match=r"bad\.npz: FP32 output 's' holds 2 NaN/inf.*first seen in 'l'.*'log'"):
            session.run(ShardRef(str(bad), str(bad)))


def test_overflowing_sum_is_not_a_false_alarm(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
    )
    path = tmp_path / "id.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    shard = tmp_path / "big.npz"
    np.savez(shard, x=np.full((1, 4), 3e38, np.float32))  # finite, but the sum overflows
    rows = shard_stats(path, ShardRef(str(shard), str(shard))).to_pylist()
    assert rows[1]["max"] == pytest.approx(3e38, rel=1e-6) and rows[1]["nonfinite"] == 0


def test_parquet_roundtrip_and_schema_validation(tmp_path):
    model = _save(tmp_path)
    ref, _ = _shard(tmp_path, "s0", 2, 6)
    table = shard_stats(model, ref)
    write_shard_stats(table, tmp_path / "shard.parquet")
    assert read_shard_stats(tmp_path / "shard.parquet").equals(table)
    reduced = reduce_stats([table])
    write_stats(reduced, tmp_path / "stats.parquet")
    assert read_stats(tmp_path / "stats.parquet").equals(reduced)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left

    pq.write_table(reduced.drop(["max_shard"]), tmp_path / "missing.parquet")
    with pytest.raises(DataError, match="max_shard"):
        read_stats(tmp_path / "missing.parquet")
    retyped = reduced.set_column(reduced.schema.get_field_index("max_abs"), "max_abs", pa.array([str(v) for v in reduced["max_abs"].to_pylist()]))
    pq.write_table(retyped, tmp_path / "typed.parquet")
    with pytest.raises(DataError, match="max_abs.*string"):
        read_stats(tmp_path / "typed.parquet")
    with pytest.raises(DataError, match="does not exist"):
        read_stats(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="shard_sha256"):
        reduce_stats([table.drop(["shard_sha256"])])
