"""Model checks that need no data run in the preflight: an op onnxruntime cannot run (a custom
domain, an op type ONNX does not have) is refused in one line naming it, exit 2, before the
flow starts and before anything is written (issue 20: it was found inside the flow and left an
empty ``.staging/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fp16guard.cli.main import main


def _model(tmp_path: Path, op: str, domain: str, local_function: bool = False) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"), helper.make_node(op, ["h"], ["y"], name="odd", domain=domain)]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    functions = []
    if local_function:  # the same op, defined by the model itself: runnable
        functions = [helper.make_function(domain, op, ["a"], ["b"], [helper.make_node("Neg", ["a"], ["b"])], [helper.make_opsetid("", 17)])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets, functions=functions)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    for role in ("calib", "holdout"):
        (tmp_path / role).mkdir()
        for i in range(2):
            np.savez(tmp_path / role / f"{i}.npz", x=np.random.default_rng(i + (10 if role == "holdout" else 0)).normal(size=(2, 4)).astype(np.float32))
    return path


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if the command gets as far as looking for a Prefect server."""
    def _reached(*_a, **_k):
        raise AssertionError("the command reached the Prefect server: the model was not refused before the flow")

    monkeypatch.setattr("fp16guard.cli.server.ensure_api", _reached)


@pytest.mark.parametrize("op,domain,needles", [
    ("Mystery", "acme.ops", ["Mystery", "'acme.ops'", "node 'odd'"]),
    ("Relux", "", ["Relux", "default ONNX domain", "not an ONNX op"]),
])
def test_run_refuses_an_op_onnxruntime_cannot_run_before_the_flow(tmp_path, capsys, no_server, op, domain, needles):
    model = _model(tmp_path, op, domain)
    store = tmp_path / "store"
    code = main(["run", str(model), "--calib", str(tmp_path / "calib"), "--holdout", str(tmp_path / "holdout"),
                 "--name", "m", "--model-version", "1", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fp16guard: error: model "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not store.exists(), "nothing is written: no store, no .staging"


def test_convert_refuses_it_too_and_writes_no_output(tmp_path, capsys):
    model = _model(tmp_path, "Mystery", "acme.ops")
    out = tmp_path / "out.onnx"
    code = main(["convert", str(model), "--calib", str(tmp_path / "calib"), "--holdout", str(tmp_path / "holdout"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Mystery" in err and "acme.ops" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_model_local_function_of_a_custom_domain_is_not_refused(tmp_path):
    from fp16guard.preflight import load_checked_graph

    model = _model(tmp_path, "Mystery", "acme.ops", local_function=True)
    load_checked_graph(model)  # no ModelError: the model defines the op


def test_an_event_started_run_refuses_an_overlapping_holdout_in_the_flow(prefect_api_url, demo_files, tmp_path):
    """Issue 19's leftover: a run started by an event (or a deployment) never passes the CLI's
    preflight; the flow itself refuses the overlap, as the CLI does, before anything is staged."""
    from fp16guard.errors import DataError
    from fp16guard.events import run_parameters
    from flows.calibrate import calibrate

    store = tmp_path / "store"
    params = run_parameters({"model": demo_files["model"], "name": "demo", "version": "1", "calib": [demo_files["calib"]],
                             "holdout": [demo_files["calib"]], "store": str(store)}, trigger_event={"id": "e1", "event": "fp16guard.model.registered"})
    with pytest.raises(DataError, match=r"holdout overlaps the calibration data: .*\(same file\).*allow_overlap"):
        calibrate(params)
    assert not (store / "demo").exists(), "nothing staged, nothing stored"
