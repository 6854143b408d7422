"""verify(): figures on hand-made outputs, the gate, NaN, integer outputs, shards of mixed sizes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.io.shards import ShardRef
from fp16guard.errors import DataError, NonFiniteError, VerificationFailed
from fp16guard.settings import VerifySettings
from fp16guard.verify.compare import gate, has_fp16, verify


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _fin(name, *dims, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, ["batch", *dims])


def _identity(width=4):
    return _model([helper.make_node("Identity", ["x"], ["y"], name="id")], [_fin("x", width)], [_fin("y", width)])


def _add_const(delta, width=4):
    c = numpy_helper.from_array(np.asarray(delta, dtype=np.float32), "delta")
    return _model([helper.make_node("Add", ["x", "delta"], ["y"], name="add")], [_fin("x", width)], [_fin("y", width)], [c])


def _shards(tmp_path, arrays: list[np.ndarray], key="x") -> list[ShardRef]:
    refs = []
    for i, a in enumerate(arrays):
        p = tmp_path / f"s{i}.npz"
        np.savez(p, **{key: a})
        refs.append(ShardRef(str(p), str(p)))
    return refs


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(0, 3, size=(n, 4)).astype(np.float32) for n in (3, 5, 1)]
    return arrays, _shards(tmp_path, arrays)


def test_figures_match_hand_computation(data):
    arrays, refs = data
    delta = np.array([0.0, 0.01, -0.05, 0.02], dtype=np.float32)
    report = verify(_identity(), _add_const(delta), refs, VerifySettings(max_rel_error=0.5, min_cosine=0.9))
    x = np.concatenate(arrays).astype(np.float64)
    c = (np.concatenate(arrays) + delta).astype(np.float64)
    fig = report["outputs"]["y"]
    assert report["passed"] and report["reason"] is None
    assert report["samples"] == 9
    assert report["shards"] == [r.name for r in refs]
    assert fig["nonfinite"] == 0
    assert fig["elements"] == 36
    assert fig["max_abs_error"] == pytest.approx(np.abs(c - x).max(), rel=1e-6)
    assert fig["ref_max_abs"] == pytest.approx(np.abs(x).max(), rel=1e-6)
    assert fig["max_rel_error"] == pytest.approx(np.abs(c - x).max() / np.abs(x).max(), rel=1e-6)
    assert fig["cosine"] == pytest.approx(float(x.ravel() @ c.ravel() / np.linalg.norm(x) / np.linalg.norm(c)), rel=1e-9)
    assert "no FP16" in report["execution"]
    assert report["tolerances"] == {"max_rel_error": 0.5, "min_cosine": 0.9, "max_mismatch_fraction": 0.0, "output_gates": {}}
    json.dumps(report, allow_nan=False)  # verification.json is strict JSON


def test_slicing_and_batch_size_do_not_change_figures(data):
    _, refs = data
    cand = _add_const([0.0, 0.01, -0.05, 0.02])
    whole = verify(_identity(), cand, refs)["outputs"]["y"]
    sliced = verify(_identity(), cand, refs, batch_size=2)["outputs"]["y"]
    for key in ("max_abs_error", "max_rel_error", "ref_max_abs", "elements"):
        assert sliced[key] == pytest.approx(whole[key])
    assert sliced["cosine"] == pytest.approx(whole["cosine"], abs=1e-12)


def test_gate_threshold_on_relative_error(data):
    _, refs = data
    cand = _add_const([0.0, 0.0, 0.1, 0.0])
    rel = verify(_identity(), cand, refs, VerifySettings(max_rel_error=1.0))["outputs"]["y"]["max_rel_error"]
    passing = verify(_identity(), cand, refs, VerifySettings(max_rel_error=rel * 1.01, min_cosine=0.0))
    failing = verify(_identity(), cand, refs, VerifySettings(max_rel_error=rel * 0.99, min_cosine=0.0))
    assert gate(passing) is passing
    assert not failing["passed"]
    assert "'y'" in failing["reason"] and "max relative error" in failing["reason"]
    with pytest.raises(VerificationFailed) as info:
        gate(failing)
    assert info.value.reason == failing["reason"]
    assert info.value.report is failing


def test_cosine_gate(data):
    _, refs = data
    # A negated output has the same magnitudes but cosine -1.
    neg = _model([helper.make_node("Neg", ["x"], ["y"], name="neg")], [_fin("x", 4)], [_fin("y", 4)])
    report = verify(_identity(), neg, refs, VerifySettings(max_rel_error=1.0, min_cosine=0.5))
    assert report["outputs"]["y"]["cosine"] == pytest.approx(-1.0)
    assert not report["passed"] and "cosine" in report["reason"]


def test_all_zero_candidate_fails_without_nan(data):
    # The RMSNorm failure mode: finite, all zeros, wrong (docs/FACTS.md #4).
    _, refs = data
    zero = _model(
        [helper.make_node("Mul", ["x", "z"], ["y"], name="mul")], [_fin("x", 4)], [_fin("y", 4)],
        [numpy_helper.from_array(np.zeros(4, np.float32), "z")],
    )
    report = verify(_identity(), zero, refs)
    fig = report["outputs"]["y"]
    assert fig["nonfinite"] == 0 and fig["cosine"] == 0.0
    assert fig["max_rel_error"] == pytest.approx(1.0)
    assert not report["passed"]


def test_nan_in_candidate_fails(tmp_path):
    refs = _shards(tmp_path, [np.array([[1.0, -2.0, 3.0, 0.5]], np.float32), np.array([[4.0, 5.0, 6.0, 7.0]] * 2, np.float32)])
    # Sqrt of a negative number is NaN: exactly one bad value in the first shard.
    sqrt = _model(
        [helper.make_node("Abs", ["x"], ["a"], name="abs"), helper.make_node("Sqrt", ["x"], ["s"], name="sqrt"),
         helper.make_node("Mul", ["s", "s"], ["y"], name="sq")],
        [_fin("x", 4)], [_fin("y", 4)],
    )
    report = verify(_identity(), sqrt, refs, VerifySettings(max_rel_error=1.0, min_cosine=-1.0))
    fig = report["outputs"]["y"]
    assert fig["nonfinite"] == 1
    assert fig["cosine"] is None
    assert not report["passed"]
    assert "NaN/inf" in report["reason"] and "'y'" in report["reason"]
    json.dumps(report, allow_nan=False)


def test_nonfinite_reference_is_a_data_error(tmp_path):
    refs = _shards(tmp_path, [np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)])
    recip = _model([helper.make_node("Reciprocal", ["x"], ["y"], name="r")], [_fin("x", 4)], [_fin("y", 4)])
    with pytest.raises(NonFiniteError, match="reference output 'y'"):
        verify(recip, recip, refs)


def test_integer_and_bool_outputs(tmp_path):
    x = np.arange(1, 41, dtype=np.float32).reshape(10, 4)
    refs = _shards(tmp_path, [x[:6], x[6:]])
    ref = _model(
        [helper.make_node("Cast", ["x"], ["i"], name="cast", to=TensorProto.INT64),
         helper.make_node("Greater", ["x", "t"], ["b"], name="gt")],
        [_fin("x", 4)], [_fin("i", 4, t=TensorProto.INT64), _fin("b", 4, t=TensorProto.BOOL)],
        [numpy_helper.from_array(np.array(20.0, np.float32), "t")],
    )
    # Candidate: column 3 doubled before the cast (1/4 of the ints differ); threshold 30 instead
    # of 20 (the 10 values 21..30 flip).
    cand = _model(
        [helper.make_node("Mul", ["x", "m"], ["xm"], name="mul"),
         helper.make_node("Cast", ["xm"], ["i"], name="cast", to=TensorProto.INT64),
         helper.make_node("Greater", ["x", "t"], ["b"], name="gt")],
        [_fin("x", 4)], [_fin("i", 4, t=TensorProto.INT64), _fin("b", 4, t=TensorProto.BOOL)],
        [numpy_helper.from_array(np.array([1, 1, 1, 2], np.float32), "m"), numpy_helper.from_array(np.array(30.0, np.float32), "t")],
    )
    report = verify(ref, cand, refs, VerifySettings(max_mismatch_fraction=0.3))
    i, b = report["outputs"]["i"], report["outputs"]["b"]
    assert i["kind"] == b["kind"] == "exact"
    assert i["mismatches"] == 10 and i["mismatch_fraction"] == pytest.approx(0.25)
    assert b["mismatches"] == 10 and b["mismatch_fraction"] == pytest.approx(0.25)
    assert report["passed"]
    strict = verify(ref, cand, refs, VerifySettings(max_mismatch_fraction=0.2))
    assert not strict["passed"] and "differ from FP32" in strict["reason"]
    assert verify(ref, ref, refs)["passed"]


def test_shards_with_different_batch_and_sequence_sizes(tmp_path):
    # Dynamic batch and sequence length: each shard has its own shape.
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=(n, t, 2)).astype(np.float32) for n, t in ((2, 5), (7, 3), (1, 9))]
    refs = _shards(tmp_path, arrays)
    seq_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 2])
    seq_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 2])
    ref = _model([helper.make_node("Identity", ["x"], ["y"], name="id")], [seq_in], [seq_out])
    scale = numpy_helper.from_array(np.array(1.001, np.float32), "s")
    cand = _model([helper.make_node("Mul", ["x", "s"], ["y"], name="mul")], [seq_in], [seq_out], [scale])
    report = verify(ref, cand, refs, batch_size=3)
    flat = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
    fig = report["outputs"]["y"]
    assert report["samples"] == 10
    assert fig["elements"] == flat.size
    assert fig["max_abs_error"] == pytest.approx(np.abs(flat * np.float32(1.001) - flat).max(), rel=1e-3)
    assert fig["cosine"] == pytest.approx(1.0)
    assert report["passed"]


def test_shape_mismatch_and_missing_output_fail(tmp_path):
    refs = _shards(tmp_path, [np.ones((2, 4), np.float32)])
    two = _model(
        [helper.make_node("Identity", ["x"], ["y"], name="id"), helper.make_node("Identity", ["x"], ["z"], name="id2")],
        [_fin("x", 4)], [_fin("y", 4), _fin("z", 4)],
    )
    report = verify(two, _identity(), refs)
    assert not report["passed"] and "'z'" in report["reason"] and "missing" in report["reason"]
    flat = _model(
        [helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=0)], [_fin("x", 4)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m"])],
    )
    report = verify(_identity(), flat, refs)
    assert not report["passed"] and "shape" in report["reason"]


def test_empty_holdout_and_bad_shard(tmp_path):
    with pytest.raises(DataError):
        verify(_identity(), _identity(), [])
    refs = _shards(tmp_path, [np.ones((2, 4), np.float32)], key="not_x")
    with pytest.raises(DataError, match="no input 'x'"):
        verify(_identity(), _identity(), refs)


def test_models_given_as_paths(tmp_path, data):
    _, refs = data
    onnx.save(_identity(), tmp_path / "ref.onnx")
    onnx.save(_add_const([0.0, 0.0, 0.0, 1e-3]), tmp_path / "cand.onnx")
    report = verify(str(tmp_path / "ref.onnx"), tmp_path / "cand.onnx", refs)
    assert report["passed"]
    assert report["outputs"]["y"]["max_abs_error"] == pytest.approx(1e-3, rel=1e-3)


def _fp16_cast_model(width=4):
    # x -> Cast(FP16) -> Mul by 1000 in FP16 -> Cast(FP32): overflows for |x| > 65.5.
    k = numpy_helper.from_array(np.array(1000.0, np.float16), "k")
    return _model(
        [helper.make_node("Cast", ["x"], ["xh"], name="to16", to=TensorProto.FLOAT16),
         helper.make_node("Mul", ["xh", "k"], ["yh"], name="mul"),
         helper.make_node("Cast", ["yh"], ["y"], name="to32", to=TensorProto.FLOAT)],
        [_fin("x", width)], [_fin("y", width)], [k],
    )


def test_has_fp16():
    assert has_fp16(_fp16_cast_model())
    assert not has_fp16(_identity())


def test_fp16_candidate_is_emulated_on_cpu(tmp_path):
    refs = _shards(tmp_path, [np.array([[1.0, 2.0, 100.0, 3.0]], np.float32)])
    k = numpy_helper.from_array(np.array(1000.0, np.float32), "k")
    ref = _model([helper.make_node("Mul", ["x", "k"], ["y"], name="mul")], [_fin("x", 4)], [_fin("y", 4)], [k])
    report = verify(ref, _fp16_cast_model(), refs)
    assert report["emulated"] and "emulation" in report["execution"]
    # 100 * 1000 = 1e5 does not fit FP16: the emulated candidate gives inf.
    assert report["outputs"]["y"]["nonfinite"] == 1
    assert not report["passed"]


def test_verify_mixed_builds_and_emulates(tmp_path):
    from fp16guard import examples
    from fp16guard.io.shards import discover_shards
    from fp16guard.verify.compare import verify_mixed

    model = examples.build_model("rmsnorm")
    examples.write_shards("rmsnorm", tmp_path, 2, [3, 4], seed=2)
    holdout = discover_shards([str(tmp_path)])
    _, all16 = verify_mixed(model, set(), holdout)
    assert all16["emulated"] and not all16["passed"]
    # The RMSNorm overflow is finite: caught by error and cosine, not by NaN.
    assert all16["outputs"]["y"]["nonfinite"] == 0
    assert all16["outputs"]["y"]["cosine"] == 0.0
    pinned = {"norm/Pow", "norm/ReduceMean", "norm/AddEps", "norm/Sqrt"}
    mixed, report = verify_mixed(model, pinned, holdout)
    assert report["passed"], report["reason"]
    assert report["samples"] == 7
