"""Underflow figures and constant tensors in the statistics pass: real onnxruntime, numpy as reference."""

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import DataError
from fp16guard.graph.instrument import FP16_MIN_NORMAL
from fp16guard.io.shards import ShardRef
from fp16guard.stats.collect import STATS_SCHEMA, StatsSession, read_stats, reduce_stats, write_stats

F = TensorProto.FLOAT


def _model(tmp_path, opset=17):
    """x[N,8] * scale (ConstantOfShape 1e-3, transposed: constant) -> Mul -> Relu -> y."""
    shape = numpy_helper.from_array(np.array([8, 1], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["c"], name="fill", value=numpy_helper.from_array(np.array([1e-3], np.float32))),
            helper.make_node("Transpose", ["c"], ["scale"], name="transpose"),
            helper.make_node("Mul", ["x", "scale"], ["m"], name="mul"),
            helper.make_node("Relu", ["m"], ["y"], name="relu"),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 8])],
        [helper.make_tensor_value_info("y", F, ["N", 8])],
        [shape],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _figures(arr):
    a = np.abs(arr.astype(np.float64)).ravel()
    nz = a[a > 0]
    small = nz[nz < FP16_MIN_NORMAL]
    return {"nonzero": nz.size, "subnormal": small.size, "min_nonzero_abs": nz.min() if nz.size else np.inf, "abs_sum": a.sum(), "subnormal_abs_sum": small.sum()}


def test_underflow_columns_match_numpy_over_shards(tmp_path):
    path = _model(tmp_path)
    rng = np.random.default_rng(0)
    xs, refs = [], []
    for i in range(2):
        x = (rng.normal(size=(3, 8)) * 0.05).astype(np.float32)  # x * 1e-3: many values below 2**-14
        x[0, :3] = 0.0
        np.savez(tmp_path / f"s{i}.npz", x=x)
        xs.append(x)
        refs.append(ShardRef(str(tmp_path / f"s{i}.npz"), str(tmp_path / f"s{i}.npz")))
    with StatsSession(path) as session:
        reduced = reduce_stats([session.run(r) for r in refs])
    x = np.concatenate(xs)
    m = x * np.float32(1e-3)
    expected = {"x": x, "c": np.full((8, 1), 1e-3, np.float32), "scale": np.full((1, 8), 1e-3, np.float32), "m": m, "y": np.maximum(m, 0)}
    rows = {r["tensor"]: r for r in reduced.to_pylist()}
    assert set(rows) == set(expected)
    for name, arr in expected.items():
        want = _figures(arr) if name not in ("c", "scale") else {k: (v * 2 if k in ("nonzero", "subnormal", "abs_sum", "subnormal_abs_sum") else v) for k, v in _figures(arr).items()}
        for key, value in want.items():
            assert rows[name][key] == pytest.approx(value, rel=1e-5), (name, key)
    assert rows["m"]["subnormal"] > 0.5 * rows["m"]["nonzero"]


def test_constant_tensors_are_measured_once_not_per_slice(tmp_path):
    path = _model(tmp_path)
    with StatsSession(path) as session:
        names = {session.tensors[k].name for k in session._const}
        per_slice = session._runner  # the per-shard model
        assert names == {"c", "scale"}
        inst_inputs = {i for n in per_slice._model.graph.node if n.name.startswith("fp16guard_stats") for i in n.input}
        assert not names & inst_inputs  # no reduction over a constant runs per slice


def test_old_opsets_give_null_underflow_figures(tmp_path):
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["n"], name="neg")], "g", [helper.make_tensor_value_info("x", F, ["N", 2])], [helper.make_tensor_value_info("n", F, ["N", 2])])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)]), str(path))
    np.savez(tmp_path / "s.npz", x=np.ones((2, 2), np.float32))
    with StatsSession(path) as session:
        rows = session.run(ShardRef(str(tmp_path / "s.npz"), str(tmp_path / "s.npz"))).to_pylist()
    assert rows[1]["max_abs"] == 1.0 and rows[1]["nonzero"] is None and rows[1]["min_nonzero_abs"] is None


def test_stats_files_without_the_new_columns_still_read(tmp_path):
    table = pa.Table.from_pylist(
        [{"tensor": "t", "producer": "p", "op_type": "Relu", "output_index": 0, "order": 0, "min": 0.0, "max": 2.0, "max_abs": 2.0, "nonfinite": 0, "shards": 1, "samples": 4, "max_shard": "s0", "nonzero": 3, "subnormal": 0, "min_nonzero_abs": 0.5, "abs_sum": 3.0, "subnormal_abs_sum": 0.0, "nonfinite_shard": ""}],
        schema=STATS_SCHEMA,
    )
    write_stats(table, tmp_path / "new.parquet")
    assert read_stats(tmp_path / "new.parquet").equals(table)
    old = table.drop(["nonzero", "subnormal", "min_nonzero_abs", "abs_sum", "subnormal_abs_sum", "nonfinite_shard"])
    pq.write_table(old, tmp_path / "old.parquet")
    back = read_stats(tmp_path / "old.parquet").to_pylist()[0]
    assert back["max_abs"] == 2.0 and back["nonzero"] is None and back["nonfinite_shard"] is None
    bad = table.set_column(table.schema.get_field_index("subnormal"), "subnormal", pa.array(["3"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="subnormal.*string"):
        read_stats(tmp_path / "bad.parquet")
