"""A corpus of tiny ONNX models that look like what real exporters write.

Each builder returns a :class:`CorpusModel`: the model, the feeds it runs on, how it is saved
(embedded weights or an external-data file) and what fp16guard must do with it: convert and
verify, or refuse it in one line naming the construct. The constructs are those torch.onnx
(TorchScript and dynamo), tf2onnx, paddle2onnx and onnxscript write: typed weights in
``value_info``, initializers listed as graph inputs (IR < 4), external data, opsets 7 to 21+,
model-local functions, sparse initializers, control flow, optional inputs left empty, empty
tensors, bfloat16 and float64 tensors, ops with ``tensor(float)``-only slots and shapes known only
at run time.

Every model is small (a few KiB, milliseconds per inference) so that the whole corpus runs in
seconds; :data:`CORPUS` lists the builders in a fixed order (the test ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F, H, D, BF16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16
I64 = TensorProto.INT64


@dataclass
class CorpusModel:
    """One corpus entry.

    Attributes:
        name: test id, naming the construct.
        model: the model as an exporter would write it (not normalised).
        feeds: ``make_feeds(seed) -> {input: array}``: one shard's worth of input data.
        external_data: save the weights in a separate ``<file>.data`` file beside the model.
        refused: None when the model must convert and verify; else a regex the one-line
            refusal (a ``UserError``) must match, naming the construct.
        fp32_nodes: extra nodes to keep FP32 beyond the plan (exercises mixed borders).
    """

    name: str
    model: onnx.ModelProto
    make_feeds: Callable[[int], dict[str, np.ndarray]]
    external_data: bool = False
    refused: str | None = None
    fp32_nodes: set[str] = field(default_factory=set)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(*shape, seed=0, dtype=np.float32) -> np.ndarray:
    return _rng(seed).standard_normal(shape).astype(dtype)


def _init(name: str, values, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17, ir=8, value_info=(), functions=(), extra_opsets=(), sparse=(), full_check=True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "corpus", inputs, outputs, initializer=list(inits), value_info=list(value_info), sparse_initializer=list(sparse))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = ir
    model.producer_name = "fp16guard-corpus"
    onnx.checker.check_model(model, full_check=full_check)
    return model


def _x_feeds(*shape, scale=1.0, name="x"):
    return lambda seed: {name: (_normal(*shape, seed=seed) * scale).astype(np.float32)}


# ------------------------------------------------------------------------------------ builders
def typed_weights_in_value_info() -> CorpusModel:
    """The reported crash: ``value_info`` declares FLOAT for the weights (and the activations),
    as the dynamo exporter and onnxscript write; converting the weights to FP16 must retype them."""
    w1, b1, w2 = _normal(16, 32, seed=1) * 0.2, _normal(32, seed=2) * 0.1, _normal(32, 8, seed=3) * 0.2
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    value_info = [
        _vi("w1", F, [16, 32]), _vi("b1", F, [32]), _vi("w2", F, [32, 8]),
        _vi("h", F, ["batch", 32]), _vi("hb", F, ["batch", 32]), _vi("r", F, ["batch", 32]),
    ]
    model = _model(nodes, [_vi("x", F, ["batch", 16])], [_vi("y", F, ["batch", 8])], [_init("w1", w1), _init("b1", b1), _init("w2", w2)], value_info=value_info)
    return CorpusModel("typed_weights_value_info", model, _x_feeds(4, 16))


def typed_weights_shared_fp32_reader() -> CorpusModel:
    """A typed weight read by an FP16 node and by a node kept FP32 (a ``__fp16`` duplicate), and
    a typed weight that is also a graph output."""
    w = _normal(8, 8, seed=4) * 0.3
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm_fp16"),
        helper.make_node("MatMul", ["x", "w"], ["b"], name="mm_fp32"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    model = _model(
        nodes, [_vi("x", F, [2, 8])], [_vi("y", F, [2, 8]), _vi("w", F, [8, 8])], [_init("w", w)],
        value_info=[_vi("w", F, [8, 8]), _vi("a", F, [2, 8]), _vi("b", F, [2, 8])],
    )
    return CorpusModel("typed_weights_shared_with_fp32_node", model, _x_feeds(2, 8), fp32_nodes={"mm_fp32"})


def initializers_as_graph_inputs() -> CorpusModel:
    """IR 3 (old PyTorch/Caffe2 exports): every initializer is also listed as a graph input."""
    w, b = _normal(8, 4, seed=5) * 0.3, _normal(4, seed=6) * 0.1
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm"), helper.make_node("Sigmoid", ["g"], ["y"], name="sig")]
    inputs = [_vi("x", F, [3, 8]), _vi("w", F, [8, 4]), _vi("b", F, [4])]
    model = _model(nodes, inputs, [_vi("y", F, [3, 4])], [_init("w", w), _init("b", b)], opset=7, ir=3)
    return CorpusModel("initializers_as_inputs_ir3", model, _x_feeds(3, 8))


def external_data() -> CorpusModel:
    """Weights in a separate data file beside the model (large-model exports), typed in value_info too."""
    w, w2 = _normal(32, 64, seed=7) * 0.1, _normal(64, 16, seed=8) * 0.1
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
        helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
        helper.make_node("MatMul", ["t", "w2"], ["y"], name="mm2"),
    ]
    model = _model(nodes, [_vi("x", F, ["n", 32])], [_vi("y", F, ["n", 16])], [_init("w", w), _init("w2", w2)], value_info=[_vi("w", F, [32, 64])])
    return CorpusModel("external_data", model, _x_feeds(4, 32), external_data=True)


def _conv_block(opset: int, ir: int) -> CorpusModel:
    """Conv, BatchNormalization, Relu, MaxPool, Flatten, Gemm, Softmax: forms valid at ``opset``."""
    c = 4
    inits = [
        _init("cw", _normal(c, 3, 3, 3, seed=9) * 0.3), _init("cb", _normal(c, seed=10) * 0.1),
        _init("scale", np.ones(c)), _init("bias", np.zeros(c)), _init("mean", _normal(c, seed=11) * 0.1), _init("var", np.ones(c) * 0.9),
        _init("fw", _normal(c * 4 * 4, 5, seed=12) * 0.1), _init("fb", np.zeros(5)),
    ]
    bn_attrs = {"epsilon": 1e-5}
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["bn"], name="bn", **bn_attrs),
        helper.make_node("Relu", ["bn"], ["relu"], name="relu"),
        helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    inputs = [_vi("x", F, [2, 3, 8, 8])]
    value_info = []
    if ir < 4:  # IR 3 requires every initializer to be a graph input as well
        inputs += [_vi(t.name, t.data_type, list(t.dims)) for t in inits]
    elif opset >= 18:  # as the dynamo exporter writes them: every weight typed in value_info
        value_info = [_vi(t.name, t.data_type, list(t.dims)) for t in inits]
    model = _model(nodes, inputs, [_vi("y", F, [2, 5])], inits, opset=opset, ir=ir, value_info=value_info)
    return CorpusModel(f"opset_{opset}", model, _x_feeds(2, 3, 8, 8))


def opset_18_reduce_axes_input() -> CorpusModel:
    """Opset 18: reductions take ``axes`` as an input; Split takes ``num_outputs``; LayerNormalization."""
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], name="mean", keepdims=1),
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
        helper.make_node("LayerNormalization", ["centred", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("Split", ["ln"], ["s0", "s1"], name="split", axis=1, num_outputs=2),
        helper.make_node("Mul", ["s0", "s1"], ["y"], name="mul"),
    ]
    inits = [_init("axes", [1], np.int64), _init("gamma", np.ones(8)), _init("beta", np.zeros(8))]
    model = _model(nodes, [_vi("x", F, [4, 8])], [_vi("y", F, [4, 4])], inits, opset=18, ir=8)
    return CorpusModel("opset_18_axes_inputs", model, _x_feeds(4, 8))


def opset_21_new_ops() -> CorpusModel:
    """Opset 21 (IR 10): GroupNormalization with per-channel scale, Gelu (opset 20), typed value_info."""
    nodes = [
        helper.make_node("GroupNormalization", ["x", "gscale", "gbias"], ["gn"], name="groupnorm", num_groups=2, epsilon=1e-5),
        helper.make_node("Gelu", ["gn"], ["gelu"], name="gelu"),
        helper.make_node("ReduceSum", ["gelu", "axes"], ["y"], name="sum", keepdims=0),
    ]
    inits = [_init("gscale", np.ones(4)), _init("gbias", np.zeros(4)), _init("axes", [2, 3], np.int64)]
    model = _model(nodes, [_vi("x", F, [2, 4, 3, 3])], [_vi("y", F, [2, 4])], inits, opset=21, ir=10, value_info=[_vi("gscale", F, [4])])
    return CorpusModel("opset_21_ir10", model, _x_feeds(2, 4, 3, 3))


def local_function() -> CorpusModel:
    """A model-local function (onnxscript, torch dynamo): a call node in a custom domain whose
    body holds float ops."""
    body = [
        helper.make_node("Mul", ["a", "b"], ["p"]),
        helper.make_node("Sigmoid", ["p"], ["s"]),
        helper.make_node("Mul", ["p", "s"], ["out"]),
    ]
    fn = helper.make_function("local", "SwishMul", ["a", "b"], ["out"], body, [helper.make_opsetid("", 18)])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("SwishMul", ["h", "k"], ["f"], name="call", domain="local"),
        helper.make_node("Relu", ["f"], ["y"], name="relu"),
    ]
    model = _model(
        nodes, [_vi("x", F, [3, 8])], [_vi("y", F, [3, 8])], [_init("w", _normal(8, 8, seed=13) * 0.3), _init("k", np.full(8, 1.5))],
        opset=18, ir=8, functions=[fn], extra_opsets=[("local", 1)],
    )
    return CorpusModel("local_function", model, _x_feeds(3, 8))


def sparse_initializer() -> CorpusModel:
    """A weight stored as a sparse initializer (pruned models; onnxruntime densifies it). ONNX's
    own inference types it as a sparse tensor that MatMul does not take, so only the structural
    check applies (as for such models in the wild)."""
    dense = np.zeros((8, 6), np.float32)
    dense[[0, 2, 5, 7], [1, 3, 0, 5]] = [0.5, -1.0, 2.0, 0.25]
    flat = np.flatnonzero(dense)
    values = numpy_helper.from_array(dense.reshape(-1)[flat], "w")
    indices = numpy_helper.from_array(flat.astype(np.int64), "w_indices")
    sparse = helper.make_sparse_tensor(values, indices, [8, 6])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="relu")]
    model = _model(nodes, [_vi("x", F, [2, 8])], [_vi("y", F, [2, 6])], sparse=[sparse], opset=17, ir=8, full_check=False)
    return CorpusModel("sparse_initializer", model, _x_feeds(2, 8))


def if_subgraph() -> CorpusModel:
    """If whose branches read an outer-scope FP16-able tensor and hold float ops (tf2onnx)."""
    then_g = helper.make_graph([helper.make_node("Mul", ["h", "two"], ["t_out"])], "then", [], [_vi("t_out", F, [2, 4])], [_init("two", [2.0])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e_out"])], "else", [], [_vi("e_out", F, [2, 4])])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"], name="cond"),
        helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_g, else_branch=else_g),
        helper.make_node("Add", ["branch", "h"], ["y"], name="add"),
    ]
    inits = [_init("w", _normal(4, 4, seed=14) * 0.5), _init("zero", 0.0)]
    model = _model(nodes, [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], inits, opset=13, ir=7)
    return CorpusModel("if_subgraph", model, _x_feeds(2, 4))


def loop_subgraph() -> CorpusModel:
    """Loop with a float loop-carried value and an outer-scope weight (torch scripted loops)."""
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["acc_in", "w"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [_vi("i", I64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _vi("acc_in", F, [2, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("acc_out", F, [2, 4])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Loop", ["trips", "", "r"], ["final"], name="loop", body=body),
        helper.make_node("Mul", ["final", "r"], ["y"], name="mul"),
    ]
    inits = [_init("w", _normal(4, 4, seed=15) * 0.5), _init("trips", 3, np.int64)]
    model = _model(nodes, [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], inits, opset=13, ir=7)
    return CorpusModel("loop_subgraph_optional_cond", model, _x_feeds(2, 4))


def scan_subgraph() -> CorpusModel:
    """Scan over the sequence axis (RNN-style exports from tf2onnx)."""
    body = helper.make_graph(
        [helper.make_node("Add", ["state_in", "x_t"], ["sum"]), helper.make_node("Sigmoid", ["sum"], ["state_out"]), helper.make_node("Identity", ["state_out"], ["scan_out"])],
        "scan_body",
        [_vi("state_in", F, [4]), _vi("x_t", F, [4])],
        [_vi("state_out", F, [4]), _vi("scan_out", F, [4])],
    )
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["xs"], name="scale"),
        helper.make_node("Scan", ["init", "xs"], ["last", "all"], name="scan", body=body, num_scan_inputs=1),
        helper.make_node("ReduceMean", ["all"], ["m"], name="mean", axes=[0], keepdims=0),
        helper.make_node("Add", ["m", "last"], ["y"], name="add"),
    ]
    inits = [_init("k", [0.5]), _init("init", np.zeros(4))]
    model = _model(nodes, [_vi("x", F, [5, 4])], [_vi("y", F, [4])], inits, opset=13, ir=7)
    return CorpusModel("scan_subgraph", model, _x_feeds(5, 4))


def optional_inputs() -> CorpusModel:
    """Optional inputs left empty (``""``): Clip without min, Resize with neither roi nor scales,
    Dropout without ratio (torch exports all three)."""
    nodes = [
        helper.make_node("Clip", ["x", "", "hi"], ["clipped"], name="clip"),
        helper.make_node("Resize", ["clipped", "", "", "sizes"], ["up"], name="resize", mode="nearest"),
        helper.make_node("Dropout", ["up", "", ""], ["y"], name="dropout"),
    ]
    inits = [_init("hi", 1.5), _init("sizes", [1, 2, 6, 6], np.int64)]
    model = _model(nodes, [_vi("x", F, [1, 2, 3, 3])], [_vi("y", F, [1, 2, 6, 6])], inits, opset=13, ir=7)
    return CorpusModel("optional_empty_inputs", model, _x_feeds(1, 2, 3, 3))


def empty_tensors() -> CorpusModel:
    """Empty tensors: an empty initializer (the ``roi`` of old Resize exports), an empty Concat
    operand, and an activation that is empty at run time (a zero-length Slice)."""
    nodes = [
        helper.make_node("Concat", ["x", "nothing"], ["cat"], name="concat", axis=1),
        helper.make_node("Resize", ["cat", "roi", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("Slice", ["up", "s0", "s0", "ax1"], ["empty"], name="empty_slice"),
        helper.make_node("Relu", ["empty"], ["empty_relu"], name="empty_relu"),
        helper.make_node("Concat", ["up", "empty_relu"], ["y"], name="concat2", axis=1),
    ]
    inits = [
        _init("nothing", np.zeros((1, 0, 2, 2))), _init("roi", np.zeros(0)), _init("scales", [1.0, 1.0, 2.0, 2.0]),
        _init("s0", [0], np.int64), _init("ax1", [1], np.int64),
    ]
    model = _model(nodes, [_vi("x", F, [1, 3, 2, 2])], [_vi("y", F, [1, 3, 4, 4])], inits, opset=13, ir=7)
    return CorpusModel("empty_tensors", model, _x_feeds(1, 3, 2, 2))


def bfloat16_tensors() -> CorpusModel:
    """bfloat16 weights cast to float (mixed-precision checkpoints exported as is)."""
    w = numpy_helper.from_array(_normal(6, 6, seed=16) * 0.3, "w32")
    w.CopyFrom(helper.make_tensor("w_bf16", BF16, [6, 6], numpy_helper.to_array(w).flatten().tolist()))
    nodes = [
        helper.make_node("Cast", ["w_bf16"], ["w"], name="cast_w", to=F),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    model = _model(nodes, [_vi("x", F, [2, 6])], [_vi("y", F, [2, 6])], [w], opset=17, ir=8)
    return CorpusModel("bfloat16_tensors", model, _x_feeds(2, 6))


def float64_tensors() -> CorpusModel:
    """float64 input, weights and output around a float core (sklearn and scientific exports)."""
    nodes = [
        helper.make_node("Mul", ["x", "k64"], ["scaled"], name="scale64"),
        helper.make_node("Cast", ["scaled"], ["x32"], name="to_float", to=F),
        helper.make_node("MatMul", ["x32", "w"], ["h"], name="mm"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="sig"),
        helper.make_node("Cast", ["s"], ["y"], name="to_double", to=D),
    ]
    inits = [_init("k64", [0.5], np.float64), _init("w", _normal(4, 4, seed=17) * 0.5)]
    model = _model(nodes, [_vi("x", D, [3, 4])], [_vi("y", D, [3, 4])], inits, opset=17, ir=8, value_info=[_vi("k64", D, [1])])
    return CorpusModel("float64_tensors", model, lambda seed: {"x": _normal(3, 4, seed=seed, dtype=np.float64)})


def float_only_slots() -> CorpusModel:
    """Ops whose slots are ``tensor(float)`` only: DequantizeLinear-13 output (QDQ exports),
    Range (no float16), LayerNormalization's Mean output, Resize ``scales``."""
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "wscale", "wzero"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("LayerNormalization", ["h", "gamma"], ["ln", "ln_mean"], name="ln", axis=-1),
        helper.make_node("Range", ["start", "limit", "delta"], ["ramp"], name="range"),
        helper.make_node("Add", ["ln", "ramp"], ["a"], name="add_ramp"),
        helper.make_node("Add", ["a", "ln_mean"], ["b"], name="add_mean"),
        helper.make_node("Unsqueeze", ["b", "axes"], ["b4"], name="unsq"),
        helper.make_node("Resize", ["b4", "", "scales"], ["y"], name="resize", mode="nearest"),
    ]
    inits = [
        _init("wq", _rng(18).integers(-100, 100, (4, 4)), np.int8), _init("wscale", 0.01), _init("wzero", 0, np.int8),
        _init("gamma", np.ones(4)), _init("start", 0.0), _init("limit", 4.0), _init("delta", 1.0),
        _init("axes", [0, 1], np.int64), _init("scales", [1.0, 1.0, 2.0, 1.0]),
    ]
    model = _model(nodes, [_vi("x", F, [3, 4])], [_vi("y", F, [1, 1, 6, 4])], inits, opset=17, ir=8)
    return CorpusModel("float_only_slots", model, _x_feeds(3, 4))


def runtime_shapes() -> CorpusModel:
    """Shapes that exist only at run time: symbolic dims, a Reshape target computed from Shape,
    an Expand to a computed shape and NonZero (a data-dependent size)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero_i"], ["n"], name="batch_dim", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="n1"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "w"], ["h"], name="mm"),
        helper.make_node("Greater", ["h", "zero_f"], ["pos"], name="pos"),
        helper.make_node("NonZero", ["pos"], ["nz"], name="nonzero"),
        helper.make_node("Transpose", ["nz"], ["nzt"], name="nzt"),
        helper.make_node("GatherND", ["h", "nzt"], ["picked"], name="picked"),
        helper.make_node("ReduceSum", ["picked"], ["psum"], name="psum", keepdims=0),
        helper.make_node("Add", ["h", "psum"], ["hp"], name="add"),
        helper.make_node("Expand", ["bias", "hshape"], ["bias_x"], name="expand"),
        helper.make_node("Shape", ["hp"], ["hshape"], name="hshape"),
        helper.make_node("Add", ["hp", "bias_x"], ["y"], name="add_bias"),
    ]
    # Node order as exporters sometimes leave it is topological; put hshape before expand.
    nodes.insert(12, nodes.pop(13))
    inits = [
        _init("zero_i", 0, np.int64), _init("axes0", [0], np.int64), _init("minus1", [-1], np.int64),
        _init("w", _normal(12, 5, seed=19) * 0.3), _init("zero_f", 0.0), _init("bias", _normal(5, seed=20) * 0.1),
    ]
    model = _model(nodes, [_vi("x", F, ["batch", "h", "w"])], [_vi("y", F, ["batch", 5])], inits, opset=13, ir=7)
    return CorpusModel("runtime_shapes", model, lambda seed: {"x": _normal(3, 3, 4, seed=seed)})


def ms_contrib_op() -> CorpusModel:
    """An onnxruntime contrib op (``com.microsoft`` FusedMatMul, written by ORT-optimised exports)."""
    nodes = [
        helper.make_node("FusedMatMul", ["x", "w"], ["h"], name="fused", domain="com.microsoft", alpha=1.0),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    model = _model(nodes, [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], [_init("w", _normal(4, 4, seed=21))], opset=17, ir=8, extra_opsets=[("com.microsoft", 1)])
    return CorpusModel("contrib_domain_op", model, _x_feeds(2, 4))


def unknown_custom_op() -> CorpusModel:
    """An op of a custom domain no runtime here implements: refused in one line naming it."""
    nodes = [helper.make_node("Mystery", ["x"], ["y"], name="mystery", domain="acme.ops")]
    model = _model(nodes, [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], opset=17, ir=8, extra_opsets=[("acme.ops", 1)])
    return CorpusModel("unknown_custom_domain_op", model, _x_feeds(2, 4), refused=r"Mystery|acme\.ops")


def sequence_values() -> CorpusModel:
    """Sequence-typed values (SplitToSequence / ConcatFromSequence, written for torch lists)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("SplitToSequence", ["r"], ["seq"], name="to_seq", axis=0),
        helper.make_node("ConcatFromSequence", ["seq"], ["cat"], name="from_seq", axis=1),
        helper.make_node("Sigmoid", ["cat"], ["y"], name="sig"),
    ]
    model = _model(nodes, [_vi("x", F, [2, 3])], [_vi("y", F, [1, 6])], opset=13, ir=7)
    return CorpusModel("sequence_values", model, _x_feeds(2, 3))


def constant_nodes_and_outputs() -> CorpusModel:
    """Constant nodes in every form (value, value_float, value_floats) with typed outputs, a graph
    output that is a graph input passed through, and a graph output copied to another."""
    nodes = [
        helper.make_node("Constant", [], ["c1"], name="c1", value=numpy_helper.from_array(np.full((1, 4), 0.5, np.float32))),
        helper.make_node("Constant", [], ["c2"], name="c2", value_float=2.0),
        helper.make_node("Constant", [], ["c3"], name="c3", value_floats=[1.0, -1.0, 0.5, 0.25]),
        helper.make_node("Mul", ["x", "c1"], ["a"], name="mul"),
        helper.make_node("Add", ["a", "c2"], ["b"], name="add"),
        helper.make_node("Mul", ["b", "c3"], ["y"], name="mul2"),
        helper.make_node("Identity", ["y"], ["y_copy"], name="copy"),
    ]
    typed = [_vi("c1", F, [1, 4]), _vi("c2", F, []), _vi("c3", F, [4]), _vi("a", F, [2, 4])]
    model = _model(nodes, [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4]), _vi("y_copy", F, [2, 4]), _vi("x", F, [2, 4])], opset=17, ir=8, value_info=typed)
    return CorpusModel("constants_and_passthrough_outputs", model, _x_feeds(2, 4))


def unnamed_nodes() -> CorpusModel:
    """Unnamed nodes (older exporters name none), with value_info for a tensor that no longer
    exists (a stale entry left by graph surgery) and for a typed scalar weight."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Mul", ["a", "k"], ["b"]),
        helper.make_node("Add", ["b", "k"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], [_init("k", 1.5)], opset=17, ir=8, value_info=[_vi("gone", F, [2, 4]), _vi("k", F, [])])
    return CorpusModel("unnamed_nodes_stale_value_info", model, _x_feeds(2, 4))


def duplicate_node_names() -> CorpusModel:
    """Two nodes with the same name (hand-edited graphs): the ONNX checker allows it,
    onnxruntime refuses to load it, so the FP32 reference cannot run: refused in one line."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["b"], name="dup"), helper.make_node("Add", ["b", "k"], ["y"], name="dup")]
    model = _model(nodes, [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], [_init("k", 1.5)], opset=17, ir=8)
    return CorpusModel("duplicate_node_names", model, _x_feeds(2, 4), refused=r"two nodes with same node name \(dup\)")


CORPUS: list[Callable[[], CorpusModel]] = [
    typed_weights_in_value_info,
    typed_weights_shared_fp32_reader,
    initializers_as_graph_inputs,
    external_data,
    lambda: _conv_block(7, 3),
    lambda: _conv_block(9, 4),
    lambda: _conv_block(11, 6),
    lambda: _conv_block(13, 7),
    lambda: _conv_block(17, 8),
    opset_18_reduce_axes_input,
    opset_21_new_ops,
    lambda: _conv_block(21, 10),
    lambda: _conv_block(23, 11),
    local_function,
    sparse_initializer,
    if_subgraph,
    loop_subgraph,
    scan_subgraph,
    optional_inputs,
    empty_tensors,
    bfloat16_tensors,
    float64_tensors,
    float_only_slots,
    runtime_shapes,
    ms_contrib_op,
    unknown_custom_op,
    sequence_values,
    constant_nodes_and_outputs,
    unnamed_nodes,
    duplicate_node_names,
]
