"""Model loading: validation errors, normalisation (names, IR < 4), external data, input specs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.graph.convert import to_mixed_precision
from fp16guard.errors import ModelError
from fp16guard.io.model import input_specs, load_model, model_digest


def _model(ir3: bool = False) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"]), helper.make_node("Relu", ["y"], ["z"], name="dup"), helper.make_node("Abs", ["z"], ["o"], name="dup")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])]
    if ir3:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("o", TensorProto.FLOAT, ["n", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8 if ir3 else 17)])
    model.ir_version = 3 if ir3 else model.ir_version
    return model


def test_names_are_deterministic_and_unique(tmp_path):
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    names = [n.name for n in load_model(tmp_path / "m.onnx").graph.node]
    assert names == ["MatMul_0", "Relu_1", "dup", "dup__2"]
    assert names == [n.name for n in load_model(tmp_path / "m.onnx").graph.node]


def test_ir3_model_is_normalised_into_a_valid_model(tmp_path):
    onnx.save(_model(ir3=True), str(tmp_path / "old.onnx"))
    model = load_model(tmp_path / "old.onnx")
    assert [i.name for i in model.graph.input] == ["x"] and model.ir_version >= 4
    onnx.checker.check_model(model, full_check=True)
    onnx.checker.check_model(to_mixed_precision(model, set()), full_check=True)
    assert [s.name for s in input_specs(model)] == ["x"]


def test_external_data_digest_covers_weights(tmp_path):
    onnx.save(_model(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    before = model_digest(tmp_path / "m.onnx")
    assert np.allclose(numpy_helper.to_array(load_model(tmp_path / "m.onnx").graph.initializer[0]), np.eye(4))
    (tmp_path / "w.bin").write_bytes(np.full((4, 4), 2, np.float32).tobytes())
    assert model_digest(tmp_path / "m.onnx") != before
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelError, match="external data"):
        load_model(tmp_path / "m.onnx")


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (b"garbage", "not a valid ONNX")])
def test_bad_model_files(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_input_specs_describe_dynamic_dims(tmp_path):
    spec = input_specs(_model())[0]
    assert spec.shape == ("n", 4) and spec.describe() == "'x' (float32, [n, 4])"


def test_save_model_small_and_with_external_weights(tmp_path, monkeypatch):
    import fp16guard.io.model as model_io

    small = model_io.save_model(_model(), tmp_path / "small.onnx")
    assert load_model(small).graph.node and not (tmp_path / "small.onnx.data").exists()
    # Past the protobuf limit the weights go beside the model (the limit lowered to exercise it).
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 10)
    big = _model()
    big.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.eye(4, dtype=np.float32) * 3, "w"))
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "unused_big")
    big.graph.initializer.append(w)
    path = model_io.save_model(big, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size >= 64 * 64 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "small.onnx"]
    loaded = load_model(path)
    assert np.array_equal(numpy_helper.to_array(next(t for t in loaded.graph.initializer if t.name == "unused_big")), np.ones((64, 64)))
