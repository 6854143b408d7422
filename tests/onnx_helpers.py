"""Small builders for test models (tiny ONNX graphs made in code) and a plain onnxruntime run."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F, H, D = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE


def make_model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    """A checked model (IR 8, ONNX domain at ``opset``) from nodes, value infos and initializers."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def io(name, *dims, dtype=F):
    """A tensor value info (graph input or output)."""
    return helper.make_tensor_value_info(name, dtype, list(dims))


def init(name, values, dtype=np.float32):
    """An initializer from values."""
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def run_ort(model: onnx.ModelProto, feeds: dict, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> list[np.ndarray]:
    """Run ``model`` once on the CPU provider at optimisation ``level``; outputs in graph order."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
