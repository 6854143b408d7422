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
        want = _figures(arr)
        if name in ("c", "scale"):  # constants: measured once, repeated in each shard's table
            want = {k: (v * 2 if k in ("nonzero", "subnormal", "abs_sum", "subnormal_abs_sum") else v) for k, v in want.items()}
        for key, value in want.items():
            assert rows[name][key] == pytest.approx(value, rel=1e-5), (name, key)
        assert rows[name]["examined"] == (arr.size * 2 if name in ("c", "scale") else arr.size)
    assert rows["m"]["subnormal"] > 0.5 * rows["m"]["nonzero"]


def test_constant_tensors_are_measured_once_not_per_slice(tmp_path):
    path = _model(tmp_path)
    with StatsSession(path) as session:
        names = {session.tensors[k].name for k in session._const}
        per_slice = session._runner  # the per-shard model
        assert names == {"c", "scale"}
        inst_inputs = {i for n in per_slice._model.graph.node if n.name.startswith("fp16guard_stats") for i in n.input}
        assert not names & inst_inputs  # no reduction over a constant runs per slice


@pytest.mark.parametrize("opset, measured", [(8, False), (9, True)])  # opset 9: through a Gather sample
def test_old_opsets_give_null_underflow_figures(tmp_path, opset, measured):
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["n"], name="neg")], "g", [helper.make_tensor_value_info("x", F, ["N", 2])], [helper.make_tensor_value_info("n", F, ["N", 2])])
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    np.savez(tmp_path / "s.npz", x=np.ones((2, 2), np.float32))
    with StatsSession(path) as session:
        rows = session.run(ShardRef(str(tmp_path / "s.npz"), str(tmp_path / "s.npz"))).to_pylist()
    assert rows[1]["max_abs"] == 1.0
    if measured:
        assert rows[1]["nonzero"] == 4 and rows[1]["examined"] == 4 and rows[1]["min_nonzero_abs"] == 1.0
    else:
        assert rows[1]["nonzero"] is None and rows[1]["min_nonzero_abs"] is None


def test_stats_files_without_the_new_columns_still_read(tmp_path):
    table = pa.Table.from_pylist(
        [{"tensor": "t", "producer": "p", "op_type": "Relu", "output_index": 0, "order": 0, "min": 0.0, "max": 2.0, "max_abs": 2.0, "nonfinite": 0, "shards": 1, "samples": 4, "max_shard": "s0", "nonzero": 3, "subnormal": 0, "min_nonzero_abs": 0.5, "examined": 4, "abs_sum": 3.0, "subnormal_abs_sum": 0.0, "nonfinite_shard": ""}],
        schema=STATS_SCHEMA,
    )
    write_stats(table, tmp_path / "new.parquet")
    assert read_stats(tmp_path / "new.parquet").equals(table)
    old = table.drop(["nonzero", "subnormal", "min_nonzero_abs", "examined", "abs_sum", "subnormal_abs_sum", "nonfinite_shard"])
    pq.write_table(old, tmp_path / "old.parquet")
    back = read_stats(tmp_path / "old.parquet").to_pylist()[0]
    assert back["max_abs"] == 2.0 and back["nonzero"] is None and back["nonfinite_shard"] is None
    bad = table.set_column(table.schema.get_field_index("subnormal"), "subnormal", pa.array(["3"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="subnormal.*string"):
        read_stats(tmp_path / "bad.parquet")


def _rms_model(tmp_path):
    """RMS-style normalisation of small features, and a peaked softmax over 2000 classes.

    x[N,64] ~ 1e-3 -> sq = x*x (~1e-6: below FP16's normal range) -> ms = ReduceMean(sq)
    -> Add 1e-4 -> Sqrt -> y = x / that; logits[N,2000] -> Softmax -> p (mostly tiny by count,
    but nearly all its magnitude in the top class).
    """
    eps = numpy_helper.from_array(np.array(1e-4, np.float32), "eps")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
            helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean", axes=[1]),
            helper.make_node("Add", ["ms", "eps"], ["mse"], name="add_eps"),
            helper.make_node("Sqrt", ["mse"], ["rms"], name="sqrt"),
            helper.make_node("Div", ["x", "rms"], ["y"], name="normalise"),
            helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 64]), helper.make_tensor_value_info("logits", F, ["N", 2000])],
        [helper.make_tensor_value_info("y", F, ["N", 64]), helper.make_tensor_value_info("p", F, ["N", 2000])],
        [eps],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "rms.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 2000)).astype(np.float32)
    logits[:, 7] += 30.0  # peaked: the other 1999 probabilities are ~1e-13 each
    np.savez(tmp_path / "s.npz", x=(rng.normal(size=(4, 64)) * 1e-3).astype(np.float32), logits=logits)
    return path, ShardRef(str(tmp_path / "s.npz"), str(tmp_path / "s.npz"))


def test_activation_underflow_rule_keeps_only_the_nodes_touching_underflowing_tensors(tmp_path):
    from fp16guard.io.model import load_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.settings import PlanSettings

    path, ref = _rms_model(tmp_path)
    with StatsSession(path) as session:
        stats = reduce_stats([session.run(ref)])
    rows = {r["tensor"]: r for r in stats.to_pylist()}
    assert rows["sq"]["subnormal_abs_sum"] > 0.5 * rows["sq"]["abs_sum"]  # x*x ~ 1e-6
    assert rows["p"]["subnormal"] > 0.9 * rows["p"]["nonzero"]  # tiny by count ...
    assert rows["p"]["subnormal_abs_sum"] < 1e-6 * rows["p"]["abs_sum"]  # ... but not by magnitude
    plan = make_plan(load_model(path), stats, PlanSettings())
    by_name = {e["name"]: e for e in plan.fp32_nodes}
    assert set(by_name) == {"square", "mean", "add_eps"}  # sq: square, mean; ms (~1e-6): mean, add_eps
    assert all(e["reason"] == "activation_underflow" for e in by_name.values())
    assert any("'sq'" in d and "below FP16's smallest normal" in d for d in by_name["square"]["details"])


def test_activation_underflow_rule_treats_missing_columns_as_unknown(tmp_path):
    from fp16guard.io.model import load_model
    from fp16guard.plan.planner import make_plan
    from fp16guard.settings import PlanSettings

    path, ref = _rms_model(tmp_path)
    with StatsSession(path) as session:
        stats = reduce_stats([session.run(ref)])
    old = stats.drop(["nonzero", "subnormal", "min_nonzero_abs", "examined", "abs_sum", "subnormal_abs_sum"])
    assert make_plan(load_model(path), old, PlanSettings()).fp32_names == set()


@pytest.mark.parametrize("value, dims", [(1e-6, [300, 500]), (0.0, [3, 4]), (2.5, [0, 4])])
def test_constant_of_shape_figures_from_its_definition_match_a_measured_run(tmp_path, value, dims):
    """A lone ConstantOfShape weight is known by definition (not allocated); the figures must be
    those the feed-less statistics model measures."""
    from fp16guard.graph.instrument import constant_model
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner
    from fp16guard.stats.collect import _constant_of_shape_figures

    shape = numpy_helper.from_array(np.array(dims, np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["w"], name="fill", value=numpy_helper.from_array(np.array([value], np.float32))),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", dims[0]])],
        [helper.make_tensor_value_info("y", F, ["N", dims[1]])],
        [shape],
    )
    path = tmp_path / "fill.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    session = StatsSession(path)
    (k,) = session._const
    by_definition = _constant_of_shape_figures(session._model.graph.node[0], session._model, True)
    with OnnxRuntimeRunner(constant_model(session._model, [session.tensors[k]]), optimization="disable") as runner:
        measured = session._figures(runner.infer({}, session._fetch(1)), 1)
    for key, want in measured.items():
        rel = 1e-3 if key in ("flag", "abs_sum", "subnormal_abs_sum") else 1e-6  # float32 sums in onnxruntime
        assert by_definition[key] == pytest.approx(float(want[0]), rel=rel, nan_ok=True), key
