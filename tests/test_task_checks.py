"""Checks that match the task: top-1/top-k agreement and thresholded-map agreement, always
reported, and per-output gates chosen by the user (library, settings and CLI)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import ConfigError
from fp16guard.io.shards import ShardRef
from fp16guard.settings import OutputGate, VerifySettings
from fp16guard.verify.compare import verify
from fp16guard.verify.task_checks import TaskChecks


def _model(nodes, inits=(), width=6, out="y"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", width])
    y = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "seq", width])
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(inits)), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _softmax(scale=None):
    """Softmax over the last axis; ``scale`` (per class) multiplies the logits first."""
    if scale is None:
        return _model([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=-1)])
    s = numpy_helper.from_array(np.asarray(scale, np.float32), "s")
    return _model([helper.make_node("Mul", ["x", "s"], ["xs"], name="mul"), helper.make_node("Softmax", ["xs"], ["y"], name="sm", axis=-1)], [s])


@pytest.fixture
def holdout(tmp_path):
    rng = np.random.default_rng(7)
    refs = []
    for i, n in enumerate((3, 2)):
        p = tmp_path / f"h{i}.npz"
        np.savez(p, x=rng.normal(0, 2, size=(n, 4, 6)).astype(np.float32))
        refs.append(ShardRef(str(p), str(p)))
    return refs


def _expected_top(refs, scale):
    x = np.concatenate([np.load(r.path)["x"] for r in refs]).reshape(-1, 6)
    ref_top = x.argmax(1)
    cand = x * np.asarray(scale, np.float32)
    order = np.argsort(-cand, axis=1)
    return ref_top, order


def test_sharpened_softmax_keeps_top1_but_fails_numeric(holdout):
    # Logits x 1.5: same arg-max everywhere, probabilities far from FP32.
    report = verify(_softmax(), _softmax([1.5] * 6), holdout)
    y = report["outputs"]["y"]
    assert not report["passed"] and report["outputs"]["y"]["max_rel_error"] > 0.02  # default: numeric, strict
    assert y["gate"] == "numeric"
    assert y["checks"]["top1_agreement"] == 1.0 and y["checks"]["topk_agreement"] == 1.0
    assert y["checks"]["positions"] == 20 and y["checks"]["classes"] == 6 and y["checks"]["k"] == 5
    chosen = verify(_softmax(), _softmax([1.5] * 6), holdout, VerifySettings(output_gates={"y": "top1"}))
    assert chosen["passed"] and chosen["outputs"]["y"]["gate"] == "top1"
    json.dumps(chosen, allow_nan=False)


def test_top1_and_topk_agreement_match_hand_count(holdout):
    scale = [1.0, 3.0, 1.0, 0.2, 1.0, 1.0]  # class 1 boosted, class 3 damped: some arg-maxes move
    ref_top, order = _expected_top(holdout, scale)
    top1 = float(np.mean(order[:, 0] == ref_top))
    top2 = float(np.mean([t in o[:2] for t, o in zip(ref_top, order)]))
    assert 0 < top1 < 1, "the test needs some disagreement"
    settings = VerifySettings(output_gates={"y": {"gate": "topk", "k": 2, "min_agreement": top2}})
    report = verify(_softmax(), _softmax(scale), holdout, settings)
    checks = report["outputs"]["y"]["checks"]
    assert checks["top1_agreement"] == pytest.approx(top1) and checks["topk_agreement"] == pytest.approx(top2) and checks["k"] == 2
    assert report["passed"]
    strict = verify(_softmax(), _softmax(scale), holdout, VerifySettings(output_gates={"y": "top1"}))
    assert not strict["passed"] and "top-1 class agrees" in strict["reason"] and "gate top1" in strict["reason"]


def test_threshold_agreement_and_iou():
    checks = TaskChecks(threshold=0.5)
    ref = np.array([[0.1, 0.6, 0.9, 0.4]], np.float32)
    cand = np.array([[0.2, 0.4, 0.95, np.nan]], np.float32)
    checks.update(ref, cand)
    fig = checks.figures()
    # Same side: 0.1/0.2 and 0.9/0.95; 0.6/0.4 differ; NaN never agrees.
    assert fig["threshold_agreement"] == pytest.approx(2 / 4)
    assert fig["threshold_iou"] == pytest.approx(1 / 2)  # on in both: 1; on in either: 2
    assert fig["top1_agreement"] == 0.0  # the row holds NaN: no agreement
    empty = TaskChecks()
    empty.update(np.zeros((2, 3)), np.zeros((2, 3)))
    assert empty.figures()["threshold_iou"] == 1.0 and empty.figures()["top1_agreement"] == 1.0


def test_threshold_gate_on_a_map(holdout):
    # Sigmoid map, candidate shifted by +0.02: thresholded at 0.5 almost every element agrees.
    sig = _model([helper.make_node("Sigmoid", ["x"], ["y"], name="sig")])
    shift = _model([helper.make_node("Sigmoid", ["x"], ["s"], name="sig"), helper.make_node("Add", ["s", "d"], ["y"], name="add")],
                   [numpy_helper.from_array(np.array(0.02, np.float32), "d")])
    x = np.concatenate([np.load(r.path)["x"] for r in holdout]).ravel().astype(np.float64)
    s = 1 / (1 + np.exp(-x))
    expected = float(np.mean((s > 0.5) == (s + 0.02 > 0.5)))
    report = verify(sig, shift, holdout, VerifySettings(output_gates={"y": {"gate": "threshold", "threshold": 0.5, "min_agreement": 0.9}}))
    assert report["outputs"]["y"]["checks"]["threshold_agreement"] == pytest.approx(expected, abs=1e-9)
    assert report["passed"] == (expected >= 0.9)


def test_nan_fails_every_gate(holdout):
    # sqrt(x) of normal data: NaN wherever x < 0; no gate lets it pass.
    sq = _model([helper.make_node("Sqrt", ["x"], ["y"], name="sqrt")])
    ident = _model([helper.make_node("Identity", ["x"], ["y"], name="id")])
    for gate in ("top1", "topk", "threshold"):
        report = verify(ident, sq, holdout, VerifySettings(output_gates={"y": {"gate": gate, "min_agreement": 0.0}}))
        assert not report["passed"] and "NaN/inf" in report["reason"], gate
        assert report["outputs"]["y"]["max_rel_error"] is None


def test_gate_settings_and_errors(holdout):
    with pytest.raises(ConfigError, match="'nope'.*does not have"):
        verify(_softmax(), _softmax(), holdout, VerifySettings(output_gates={"nope": "top1"}))
    with pytest.raises(ValueError):
        OutputGate(gate="top2")
    with pytest.raises(ValueError):
        OutputGate(gate="topk", k=0)
    with pytest.raises(ValueError):
        OutputGate(min_agreement=1.5)
    assert "description" in VerifySettings.model_json_schema()["properties"]["output_gates"]


def test_cli_gate_flag(holdout, tmp_path):
    from fp16guard.cli.commands.run import parse_gates
    from fp16guard.cli.main import build_parser
    from fp16guard.cli.commands.run import parameters_from_args

    assert parse_gates(["probs=top1", "a=topk:3@0.9", "m=threshold:0.25"]) == {
        "probs": {"gate": "top1"}, "a": {"gate": "topk", "k": 3, "min_agreement": 0.9}, "m": {"gate": "threshold", "threshold": 0.25}}
    for bad in ("probs", "p=top2", "p=top1:3", "p=topk:x"):
        with pytest.raises(ConfigError, match="--gate"):
            parse_gates([bad])
    args = build_parser().parse_args(["run", "m.onnx", "--calib", "c", "--holdout", "h", "--name", "n", "--version", "1", "--gate", "y=topk:2@0.5"])
    params = parameters_from_args(args)
    assert params.verify.output_gates["y"] == OutputGate(gate="topk", k=2, min_agreement=0.5)
    with pytest.raises(ConfigError, match="k"):
        parameters_from_args(build_parser().parse_args(["run", "m.onnx", "--calib", "c", "--holdout", "h", "--name", "n", "--version", "1", "--gate", "y=topk:0"]))


def test_gate_on_unknown_output_is_refused_before_the_flow(demo_files, tmp_path):
    from fp16guard.preflight import preflight
    from fp16guard.settings import RunParameters

    base = {"model": demo_files["model"], "calib": [demo_files["calib"]], "holdout": [demo_files["holdout"]], "name": "d", "version": "1", "store": str(tmp_path)}
    with pytest.raises(ConfigError, match="'nope'.*does not have.*'logits'"):
        preflight(RunParameters(**base, verify={"output_gates": {"nope": "top1"}}))
    preflight(RunParameters(**base, verify={"output_gates": {"logits": "top1"}}))  # a real output: accepted
