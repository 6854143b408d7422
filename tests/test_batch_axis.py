"""Inputs without a leading batch axis: an RNN state [layers, N, hidden] and rank-0 scalars run as
given, sliced only along the dimension the model declares as the batch. Real onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fp16guard.errors import DataError
from fp16guard.io.model import InputSpec
from fp16guard.io.shards import ShardRef, batch_axes, batch_count, check_layout, iter_slices, load_shard, peek_shard, prepare_feeds
from fp16guard.runners.onnxrt import OnnxRuntimeRunner
from fp16guard.stats.collect import StatsSession

F, I64 = TensorProto.FLOAT, TensorProto.INT64
H, D, T = 6, 4, 5


def _gru_model(path):
    """x[N, T, 4] -> Transpose -> GRU(hidden 6, initial_h = state[1, N, 6]) -> Y_h * (sample_rate / 16000)."""
    rng = np.random.default_rng(0)
    inits = [
        helper.make_tensor("W", F, [1, 3 * H, D], rng.normal(size=3 * H * D).astype(np.float32) * 0.5),
        helper.make_tensor("R", F, [1, 3 * H, H], rng.normal(size=3 * H * H).astype(np.float32) * 0.5),
        helper.make_tensor("ref_rate", F, [], [16000.0]),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="to_time_major", perm=[1, 0, 2]),
        helper.make_node("GRU", ["xt", "W", "R", "", "", "state"], ["Y", "Y_h"], name="gru", hidden_size=H),
        helper.make_node("Cast", ["sample_rate"], ["rate_f"], name="rate_to_float", to=F),
        helper.make_node("Div", ["rate_f", "ref_rate"], ["rate_scale"], name="rate_scale"),
        helper.make_node("Mul", ["Y_h", "rate_scale"], ["new_state"], name="scale_state"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", F, ["batch", "time", D]),
            helper.make_tensor_value_info("state", F, [1, "batch", H]),
            helper.make_tensor_value_info("sample_rate", I64, []),
        ],
        [helper.make_tensor_value_info("new_state", F, [1, "batch", H]), helper.make_tensor_value_info("Y", F, ["time", 1, "batch", H])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


def _gru_shard(path, n=3, seed=1):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(size=(n, T, D)).astype(np.float32), state=rng.normal(size=(1, n, H)).astype(np.float32), sample_rate=np.array(8000, np.int64))
    return ShardRef(str(path), str(path))


def test_batch_axes_follow_the_shared_symbolic_dimension():
    specs = [
        InputSpec("x", np.dtype("float32"), ("batch", "time", 4)),
        InputSpec("state", np.dtype("float32"), (2, "batch", 128)),
        InputSpec("sample_rate", np.dtype("int64"), ()),
    ]
    assert batch_axes(specs) == {"x": 0, "state": 1, "sample_rate": None}
    # No names: the leading axis where the inputs agree, none where they do not.
    assert batch_axes([InputSpec("x", np.dtype("float32"), (1, 16))]) == {"x": 0}
    assert batch_axes([InputSpec("x", np.dtype("float32"), (1, 16)), InputSpec("h", np.dtype("float32"), (2, 1, 8))]) == {"x": None, "h": None}
    assert batch_axes([InputSpec("x", np.dtype("float32"), (None, 16)), InputSpec("h", np.dtype("float32"), (2, None, 8))]) == {"x": 0, "h": None}


def test_a_lone_symbolic_width_is_not_a_batch_axis():
    # An image of fixed batch 1 and a dynamic width (a CRNN's [1, 1, 64, 'image_width']): the width
    # leads no input and is shared by none, so the leading axis is the batch, not the width.
    spec = InputSpec("img", np.dtype(np.float32), (1, 1, 64, "image_width"))
    assert batch_axes([spec]) == {"img": 0}
    # The same name shared by two inputs is a batch axis wherever it sits.
    a = InputSpec("x", np.dtype(np.float32), (1, "n", 8))
    b = InputSpec("s", np.dtype(np.float32), (2, "n", 4))
    assert batch_axes([a, b]) == {"x": 1, "s": 1}


def test_state_with_batch_on_axis_1_and_a_rank0_input_run_in_slices(tmp_path):
    model = _gru_model(tmp_path / "gru.onnx")
    ref = _gru_shard(tmp_path / "s.npz")
    with StatsSession(model) as session:
        assert check_layout(ref, peek_shard(ref), session.specs) == 3
        feeds = prepare_feeds(ref, load_shard(ref), session.specs)
        assert batch_count(feeds) == 3
        parts = list(iter_slices(feeds, 2))
        assert [p["state"].shape for p in parts] == [(1, 2, H), (1, 1, H)] and all(p["sample_rate"].shape == () for p in parts)
        whole = session.run(ref)
    with StatsSession(model, batch_size=1) as session:
        sliced = session.run(ref)
    assert whole["samples"][0].as_py() == 3
    for col in ("min", "max", "max_abs", "nonfinite"):
        np.testing.assert_allclose(sliced[col].to_numpy(), whole[col].to_numpy(), rtol=1e-6, err_msg=col)
    # Element counts add up over inference calls: a tensor made from the rank-0 input alone is
    # seen once per slice; every batched tensor is seen exactly once.
    per_call = {r["tensor"] for r in whole.to_pylist()} & {"rate_f", "rate_scale", "sample_rate"}
    for w, s in zip(whole.to_pylist(), sliced.to_pylist()):
        assert s["nonzero"] == w["nonzero"] * (3 if w["tensor"] in per_call else 1), w["tensor"]
    # The sliced run computes what the whole run computes, sample by sample.
    with OnnxRuntimeRunner(onnx.load(str(model))) as runner:
        full = runner.infer(dict(feeds))["new_state"]
        pieces = np.concatenate([runner.infer(dict(p))["new_state"] for p in iter_slices(feeds, 1)], axis=1)
    np.testing.assert_allclose(pieces, full, rtol=1e-6)


def test_batch_mismatch_on_the_state_axis_is_one_clear_error(tmp_path):
    model = _gru_model(tmp_path / "gru.onnx")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, T, D), np.float32), state=np.zeros((1, 2, H), np.float32), sample_rate=np.array(8000, np.int64))
    with StatsSession(model) as session, pytest.raises(DataError, match=r"input 'state' has 2 samples on its batch axis 1 but other inputs have 3.*'batch'"):
        session.run(ShardRef(str(bad), str(bad)))


def test_model_without_a_batch_axis_runs_one_inference_per_shard(tmp_path):
    """y = table[2, 3] * gain (rank 0) + bias[3]: no common batch axis, so nothing is sliced,
    whatever --batch-size says."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["table", "gain"], ["scaled"], name="scale"), helper.make_node("Add", ["scaled", "bias"], ["y"], name="shift")],
        "g",
        [helper.make_tensor_value_info("table", F, [2, 3]), helper.make_tensor_value_info("gain", F, []), helper.make_tensor_value_info("bias", F, [3])],
        [helper.make_tensor_value_info("y", F, [2, 3])],
    )
    path = tmp_path / "scalar.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    shard = tmp_path / "s.npz"
    np.savez(shard, table=np.arange(6, dtype=np.float32).reshape(2, 3), gain=np.array(-2.0, np.float32), bias=np.ones(3, np.float32))
    ref = ShardRef(str(shard), str(shard))
    with StatsSession(path, batch_size=1) as session:
        assert set(batch_axes(session.specs).values()) == {None}
        assert check_layout(ref, peek_shard(ref), session.specs) == 1
        rows = {r["tensor"]: r for r in session.run(ref).to_pylist()}
    assert rows["y"]["min"] == -9.0 and rows["gain"]["max"] == -2.0 and rows["y"]["samples"] == 1
    np.savez(shard, table=np.zeros((3, 3), np.float32), gain=np.array(1.0, np.float32), bias=np.ones(3, np.float32))
    with pytest.raises(DataError, match=r"input 'table' has shape \[3, 3\].*axis 0 must be 2"):
        check_layout(ref, peek_shard(ref), session.specs)
