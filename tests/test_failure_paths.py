"""Path escapes: external data outside the model's folder is refused before anything is opened."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fp16guard.errors import ModelError


def _model_with_external(folder: Path, location: str) -> Path:
    """y = x + w, where w (4 floats) is external data at ``location``."""
    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _calls():
    from fp16guard.io.model import external_data_files, load_graph, load_model, model_digest

    return {
        "load_model": load_model,
        "load_graph": load_graph,
        "model_digest": model_digest,
        "external_data_files": external_data_files,
    }


def _outside_fifo(tmp_path: Path) -> Path:
    """A FIFO outside the model folder: opening it for reading would block, so a call that
    returns proves it was not opened."""
    fifo = tmp_path / "outside" / "secret"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize("call", sorted(_calls()))
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_the_folder_is_refused_unopened(tmp_path, call, kind):
    fifo = _outside_fifo(tmp_path)
    folder = tmp_path / "model"
    if kind == "dotdot":
        location = "../outside/secret"
    elif kind == "absolute":
        location = str(fifo)
    else:
        folder.mkdir()
        (folder / "w.bin").symlink_to(fifo)
        location = "w.bin"
    path = _model_with_external(folder, location)
    outcome: dict = {}

    def target():
        try:
            _calls()[call](path)
        except Exception as exc:  # noqa: BLE001 — recorded for the asserts below
            outcome["exc"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():
        with open(fifo, "wb"):
            pass  # unblock the reader
        pytest.fail(f"{call} opened the file outside the model folder")
    assert isinstance(outcome.get("exc"), ModelError), outcome
    message = str(outcome["exc"])
    assert "outside the model's folder" in message and "\n" not in message


def test_external_data_inside_the_folder_still_loads(tmp_path):
    from fp16guard.io.model import load_model, model_digest

    folder = tmp_path / "model"
    path = _model_with_external(folder, "weights/w.bin")
    (folder / "weights").mkdir()
    (folder / "weights" / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = load_model(path)
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0, 1, 2, 3]
    assert len(model_digest(path)) == 64
