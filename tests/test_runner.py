"""OnnxRuntimeRunner on tiny models: paths, protos, provider fallback, errors."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard.errors import ModelError
from fp16guard.runners.onnxrt import OnnxRuntimeRunner, resolve_providers


def _model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_infer_from_proto_and_path_agree(tmp_path):
    model = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.ones((2, 3), np.float32)
    with OnnxRuntimeRunner(model) as a, OnnxRuntimeRunner(str(path), optimization="disable") as b:
        ya, yb = a.infer({"x": x})["y"], b.infer({"x": x})["y"]
        assert a.output_names == ["y"]
        assert a.providers == ["CPUExecutionProvider"]
    np.testing.assert_array_equal(ya, x @ np.arange(6, dtype=np.float32).reshape(3, 2))
    np.testing.assert_array_equal(ya, yb)


def test_missing_provider_falls_back_to_cpu_with_one_line(capsys):
    from fp16guard.runners import onnxrt

    onnxrt._WARNED.clear()  # the warning is printed once per process
    with OnnxRuntimeRunner(_model(), providers=["CUDAExecutionProvider"]) as runner:
        assert runner.providers == ["CPUExecutionProvider"]
    with OnnxRuntimeRunner(_model(), providers=["CUDAExecutionProvider"]):
        pass
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDAExecutionProvider" in err[0] and "falling back" in err[0]


def test_resolve_providers_keeps_order_and_cpu():
    assert resolve_providers(["B", "CPUExecutionProvider"], ["CPUExecutionProvider", "B"]) == ["B", "CPUExecutionProvider"]
    assert resolve_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_bad_model_is_a_model_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        with OnnxRuntimeRunner(str(path)):
            pass


def test_bad_optimization_level():
    with pytest.raises(ValueError, match="optimization"):
        OnnxRuntimeRunner(_model(), optimization="max")


def test_inactive_runner_refuses():
    runner = OnnxRuntimeRunner(_model())
    with pytest.raises(RuntimeError):
        runner.infer({"x": np.ones((1, 3), np.float32)})
