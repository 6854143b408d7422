"""Engine inspector JSON (10.x and 11.x formats) and the check that fails a build (no TensorRT needed)."""

import json

import pytest

from fp16guard.backends.tensorrt.build import INSPECT_NAME, REJECTED_INSPECT_NAME, ENGINE_NAME, check_and_write, plan_fp32_nodes
from fp16guard.backends.tensorrt.errors import EnginePrecisionError
from fp16guard.backends.tensorrt.inspector import (
    InspectorFormatError,
    canonical_dtype,
    check_fp32_nodes,
    parse_engine_info,
)
from fp16guard.backends.tensorrt.mapping import node_table
from fp16guard.errors import ConfigError, VerificationFailed
from fp16guard.io.hashing import sha256_bytes

from tensorrt_models import PLAN_NODES, fixture_text, plan_dict, tiny_model


def table(mixed):
    model = tiny_model(mixed)
    return node_table(model), {t.name for t in model.graph.initializer}


@pytest.mark.parametrize(
    "text, dtype",
    [
        ("Float", "fp32"),
        ("Half", "fp16"),
        ("Row major linear FP32", "fp32"),
        ("Row major linear FP16 format", "fp16"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Two wide channel vectorized row major FP16 format", "fp16"),
        ("Row major linear FP32 format (kLINEAR)", "fp32"),
        ("Row major linear BF16 format", "bf16"),
        ("BFloat16", "bf16"),
        ("Int8", "int8"),
        ("Channel major INT8 format where channel % 32 == 0", "int8"),
        ("Int32", "int32"),
        ("Row major linear INT32", "int32"),
        ("Int64", "int64"),
        ("Bool", "bool"),
        ("UInt8", "uint8"),
        ("FP8", "fp8"),
        ("", "unknown"),
        ("Something new", "unknown"),
    ],
)
def test_canonical_dtype(text, dtype):
    assert canonical_dtype(text) == dtype


def test_parse_10x():
    info = parse_engine_info(fixture_text("trt10_weak_pass.json"))
    assert info.schema == "10.x"
    assert [t["name"] for t in info.io_tensors] == ["x", "y"]
    assert len(info.layers) == 8
    fused = info.layers[1]
    assert fused.name == "/fc1/MatMul + /fc1/Add + /act/Relu"
    assert fused.outputs[0].dtype == "fp16" and fused.outputs[0].raw == "Row major linear FP16 format"
    assert fused.metadata.count("\x1f") == 2
    assert info.layers[3].inputs[1].name == "W2" and info.layers[3].inputs[1].dtype == "fp32"


def test_parse_11x():
    info = parse_engine_info(fixture_text("trt11_strong_pass.json"))
    assert info.schema == "11.x"
    assert info.io_tensors == [{"name": "x", "mode": "Input", "dtype": "fp32"}, {"name": "y", "mode": "Output", "dtype": "fp32"}]
    first = info.layers[0]
    assert first.inputs[0].dtype == "fp32" and first.inputs[0].format.startswith("Row major linear FP32")
    assert first.outputs[0].dtype == "fp16" and first.outputs[0].raw == "Half"


def test_parse_11x_layer_fields_without_io_block_and_odd_spelling():
    doc = {"Layers": [{"Name": "a", "Inputs": [], "Outputs": [{"Name": "t", "Format": "Row major linear FP16 format (kLINEAR)", "Datatype": "Half"}]}]}
    info = parse_engine_info(json.dumps(doc))
    assert info.schema == "11.x" and info.layers[0].outputs[0].dtype == "fp16"


def test_names_only_cannot_be_checked():
    info = parse_engine_info('{"Layers": ["/fc2/MatMul", "/softmax/Softmax"], "Bindings": ["x", "y"]}')
    assert info.schema == "names-only" and info.layer_names == ["/fc2/MatMul", "/softmax/Softmax"]
    nodes, inits = table(False)
    with pytest.raises(InspectorFormatError, match="DETAILED"):
        check_fp32_nodes(info, PLAN_NODES, nodes, inits)


@pytest.mark.parametrize("text", ["not json", "[]", '{"Bindings": []}'])
def test_not_inspector_json(text):
    with pytest.raises(InspectorFormatError):
        parse_engine_info(text)


def test_10x_weak_engine_passes():
    nodes, inits = table(False)
    check = check_fp32_nodes(parse_engine_info(fixture_text("trt10_weak_pass.json")), PLAN_NODES, nodes, inits)
    assert check.passed, check.violations
    assert check.checked == {"/fc2/MatMul": ["/fc2/MatMul"], "/softmax/Softmax": ["/softmax/Softmax"], "/split/Split": ["/split/Split", "/split/Split_1"]}
    assert check.absent == [] and check.partial == {}
    assert "all 3 plan nodes" in check.summary()


def test_86_weak_engine_fails_on_myelin_and_on_split_output_1():
    nodes, inits = table(False)
    check = check_fp32_nodes(parse_engine_info(fixture_text("trt86_weak_fail.json")), PLAN_NODES, nodes, inits)
    assert not check.passed
    bad = {(v["node"], v["tensor"], v["role"], v["dtype"]) for v in check.violations}
    # The Myelin range covers /fc2/MatMul and /softmax/Softmax: its Half input and output are theirs.
    assert ("/softmax/Softmax", "/softmax/Softmax_output_0", "output", "fp16") in bad
    assert ("/fc2/MatMul", "/act/Relu_output_0", "input", "fp16") in bad
    # Split's second output is computed by an unnamed layer, found through its output tensor.
    assert ("/split/Split", "s1", "output", "fp16") in bad
    assert not any(v["tensor"] == "s0" for v in check.violations)
    assert sorted({v["node"] for v in check.violations}) == PLAN_NODES
    assert check.summary().startswith("3 FP32 plan node(s) do not run in FP32")


def test_11x_strong_engine_passes_with_casts_fused_into_plan_layers():
    nodes, inits = table(True)
    check = check_fp32_nodes(parse_engine_info(fixture_text("trt11_strong_pass.json")), PLAN_NODES, nodes, inits)
    assert check.passed, check.violations
    # The border Cast fused into /fc2/MatMul reads the FP16 tensor: that is the Cast's input, not the GEMM's.
    assert check.partial == {"/fc2/MatMul": ["Cast_/fc2/MatMul_in0 + /fc2/MatMul"]}


def test_11x_strong_engine_fails():
    nodes, inits = table(True)
    check = check_fp32_nodes(parse_engine_info(fixture_text("trt11_strong_fail.json")), PLAN_NODES, nodes, inits)
    bad = {(v["node"], v["tensor"], v["role"]) for v in check.violations}
    assert ("/fc2/MatMul", "/fc2/MatMul_output_0", "output") in bad
    assert ("/softmax/Softmax", "/softmax/Softmax_output_0", "output") in bad
    assert ("/split/Split", "s0", "output") in bad
    assert not any(v["tensor"] == "s1" for v in check.violations)
    assert all(v["dtype"] == "fp16" for v in check.violations)


def test_plan_node_absent_from_engine_is_reported_not_failed():
    nodes, inits = table(False)
    check = check_fp32_nodes(parse_engine_info(fixture_text("trt10_weak_pass.json")), PLAN_NODES + ["/fc1/Add"], nodes, inits)
    # /fc1/Add is fused with FP16 nodes; its own output is internal to the fusion, so only the
    # layer's output (/act/Relu's) and input are examined: the input belongs to /fc1/MatMul.
    assert check.partial == {"/fc1/Add": ["/fc1/MatMul + /fc1/Add + /act/Relu"]}
    assert check.passed
    assert check_fp32_nodes(parse_engine_info(fixture_text("trt10_weak_pass.json")), ["Gone"], nodes, inits).absent == ["Gone"]


def test_check_and_write_passes_and_writes_both_files(tmp_path):
    nodes, inits = table(True)
    engine = b"\x00fake-serialized-engine-bytes"
    files, check, info = check_and_write(engine, fixture_text("trt11_strong_pass.json"), PLAN_NODES, nodes, inits, tmp_path)
    assert check.passed and info.schema == "11.x"
    assert (tmp_path / ENGINE_NAME).read_bytes() == engine
    assert files["engine"]["sha256"] == sha256_bytes(engine)
    assert json.loads((tmp_path / INSPECT_NAME).read_text())["I/O Tensors"][0]["Name"] == "x"
    assert not (tmp_path / REJECTED_INSPECT_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [ENGINE_NAME, INSPECT_NAME]  # no temporaries left


def test_check_and_write_fails_the_build_with_a_list(tmp_path):
    nodes, inits = table(True)
    with pytest.raises(EnginePrecisionError) as info:
        check_and_write(b"engine", fixture_text("trt11_strong_fail.json"), PLAN_NODES, nodes, inits, tmp_path)
    err = info.value
    assert isinstance(err, VerificationFailed) and err.exit_code == 1
    assert "3 FP32 plan node(s) do not run in FP32" in str(err) and "\n" not in str(err)
    assert {v["node"] for v in err.violations} == set(PLAN_NODES)
    assert err.report["precision_check"]["passed"] is False
    assert not (tmp_path / ENGINE_NAME).exists() and not (tmp_path / INSPECT_NAME).exists()
    assert (tmp_path / REJECTED_INSPECT_NAME).is_file()


def test_check_and_write_refuses_unchecked_engine(tmp_path):
    nodes, inits = table(False)
    with pytest.raises(EnginePrecisionError, match="DETAILED"):
        check_and_write(b"engine", '{"Layers": ["a", "b"], "Bindings": []}', PLAN_NODES, nodes, inits, tmp_path)
    assert not (tmp_path / ENGINE_NAME).exists()


def test_plan_fp32_nodes():
    assert plan_fp32_nodes(plan_dict()) == PLAN_NODES
    with pytest.raises(ConfigError, match="fp32_nodes"):
        plan_fp32_nodes({"threshold": 1.0})


def test_internal_tensor_of_a_plan_node_in_fp16_is_a_violation():
    """A node imported as several layers: an FP16 tensor between two of its layers is caught
    even though no ONNX tensor carries that name."""
    nodes, inits = table(False)
    tag = "[ONNX Layer: /softmax/Softmax]"
    doc = {
        "Bindings": ["x", "y"],
        "Layers": [
            {"Name": "/softmax/Softmax", "LayerType": "Shuffle", "Metadata": tag,
             "Inputs": [{"Name": "/fc2/MatMul_output_0", "Format/Datatype": "Float"}],
             "Outputs": [{"Name": "(Unnamed Layer* 7) [Shuffle]_output", "Format/Datatype": "Half"}]},
            {"Name": "/softmax/Softmax_1", "LayerType": "CaskSoftMaxV2", "Metadata": tag,
             "Inputs": [{"Name": "(Unnamed Layer* 7) [Shuffle]_output", "Format/Datatype": "Half"}],
             "Outputs": [{"Name": "/softmax/Softmax_output_0", "Format/Datatype": "Float"}]},
        ],
    }
    check = check_fp32_nodes(parse_engine_info(json.dumps(doc)), ["/softmax/Softmax"], nodes, inits)
    assert [(v["layer"], v["role"]) for v in check.violations] == [("/softmax/Softmax", "output"), ("/softmax/Softmax_1", "input")]
