"""Tiny ONNX models shared by the tests/test_tensorrt_*.py files (built in code, no downloads).

The node and tensor names match the inspector fixtures under tests/data/tensorrt/:
``x -> /fc1/MatMul -> /fc1/Add -> /act/Relu -> /fc2/MatMul -> /softmax/Softmax -> /split/Split
(s0, s1) -> /out/Add -> y``; the plan keeps /fc2/MatMul, /softmax/Softmax and /split/Split in
FP32. ``mixed=True`` gives the strongly typed form: FP16 outside the plan, Casts at the borders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DATA = Path(__file__).parent / "data" / "tensorrt"
PLAN_NODES = ["/fc2/MatMul", "/softmax/Softmax", "/split/Split"]


def plan_dict(nodes=PLAN_NODES) -> dict:
    """A plan.json-shaped dict keeping ``nodes`` in FP32."""
    return {
        "threshold": 10000.0,
        "fp32_nodes": [{"name": n, "op_type": "", "outputs": [], "reason": "test", "details": {}} for n in nodes],
        "forced_fp16": [],
        "counts": {"fp32": len(nodes)},
    }


def tiny_model(mixed: bool = False, batch: int | str = "batch") -> onnx.ModelProto:
    """The tiny model (FP32, or mixed FP16/FP32 with border Casts when ``mixed``)."""
    rng = np.random.default_rng(0)
    h = np.float16 if mixed else np.float32
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(h), "W1")
    b1 = numpy_helper.from_array(rng.standard_normal(16).astype(h), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 6)).astype(np.float32), "W2")
    split = numpy_helper.from_array(np.array([3, 3], dtype=np.int64), "split_sizes")
    F16 = TensorProto.FLOAT16
    nodes = []
    x_in = "x"
    relu_out = "/act/Relu_output_0"
    s0, s1, add_out = "s0", "s1", "y"
    if mixed:
        nodes.append(helper.make_node("Cast", ["x"], ["x_fp16"], name="Cast_x_fp16", to=F16))
        x_in = "x_fp16"
    nodes += [
        helper.make_node("MatMul", [x_in, "W1"], ["/fc1/MatMul_output_0"], name="/fc1/MatMul"),
        helper.make_node("Add", ["/fc1/MatMul_output_0", "b1"], ["/fc1/Add_output_0"], name="/fc1/Add"),
        helper.make_node("Relu", ["/fc1/Add_output_0"], [relu_out], name="/act/Relu"),
    ]
    fc2_in = relu_out
    if mixed:
        nodes.append(helper.make_node("Cast", [relu_out], ["/act/Relu_output_0_fp32"], name="Cast_/fc2/MatMul_in0", to=TensorProto.FLOAT))
        fc2_in = "/act/Relu_output_0_fp32"
    nodes += [
        helper.make_node("MatMul", [fc2_in, "W2"], ["/fc2/MatMul_output_0"], name="/fc2/MatMul"),
        helper.make_node("Softmax", ["/fc2/MatMul_output_0"], ["/softmax/Softmax_output_0"], name="/softmax/Softmax", axis=-1),
        helper.make_node("Split", ["/softmax/Softmax_output_0", "split_sizes"], [s0, s1], name="/split/Split", axis=1),
    ]
    if mixed:
        nodes += [
            helper.make_node("Cast", [s0], ["s0_fp16"], name="Cast_s0_fp16", to=F16),
            helper.make_node("Cast", [s1], ["s1_fp16"], name="Cast_s1_fp16", to=F16),
            helper.make_node("Add", ["s0_fp16", "s1_fp16"], ["/out/Add_output_0"], name="/out/Add"),
            helper.make_node("Cast", ["/out/Add_output_0"], ["y"], name="Cast_y", to=TensorProto.FLOAT),
        ]
    else:
        nodes.append(helper.make_node("Add", [s0, s1], [add_out], name="/out/Add"))
    graph = helper.make_graph(
        nodes,
        "tiny_trt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        initializer=[w1, b1, w2, split],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def fixture_text(name: str) -> str:
    """Text of an inspector fixture under tests/data/tensorrt/."""
    return (DATA / name).read_text()
