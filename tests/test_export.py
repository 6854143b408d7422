"""Plan export for TensorRT <= 10: trtexec and Polygraphy flags, and ``fp16guard show --as``."""

from __future__ import annotations

import json
import shlex

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fold_models import Net, io
from fp16guard.cli.main import main
from fp16guard.errors import ConfigError
from fp16guard.graph.convert import to_mixed_precision
from fp16guard.plan.export import export_plan


def _model() -> onnx.ModelProto:
    """Gemm -> TopK (float values + int64 indices) -> Relu: TopK is a multi-output layer."""
    net = Net(0)
    h = net.gemm("fc", "x", 8, 8, gain=1.0)
    k = net.const("k", np.array([3], dtype=np.int64))
    net.inits[-1] = onnx.numpy_helper.from_array(np.array([3], dtype=np.int64), "k")
    net.nodes.append(helper.make_node("TopK", [h, k], ["vals", "idx"], name="topk", axis=-1))
    net.nodes.append(helper.make_node("Relu", ["vals"], ["y"], name="relu"))
    return net.model([io("x", "N", 8)], [io("y", "N", 3), helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 3])])


def _plan(names):
    model = _model()
    nodes = {n.name: n for n in model.graph.node}
    return {"threshold": 1e4, "fp32_nodes": [{"name": n, "op_type": nodes[n].op_type, "outputs": list(nodes[n].output)} for n in names]}


def test_trtexec_flags_pin_every_output_of_multi_output_layers():
    model = _model()
    mixed = to_mixed_precision(model, {"fc", "topk"})
    out = export_plan(_plan(["fc", "topk"]), "runs/a/model.mixed.onnx", "trtexec", mixed)
    assert out.argv == (
        "trtexec",
        "--onnx=runs/a/model.mixed.onnx",
        "--fp16",
        "--precisionConstraints=obey",
        "--layerPrecisions=fc:fp32,topk:fp32",
        "--layerOutputTypes=fc:fp32,topk:fp32+int64",
        "--saveEngine=model.engine",
    )
    assert shlex.split(out.command) == list(out.argv)


def test_polygraphy_flags():
    out = export_plan(_plan(["fc"]), "/store/m/1/runs/a/model.mixed.onnx", "polygraphy")
    assert out.command == "polygraphy convert /store/m/1/runs/a/model.mixed.onnx --fp16 --precision-constraints obey --layer-precisions fc:float32 -o model.engine"
    assert out.run_argv == ("polygraphy", "run", "/store/m/1/runs/a/model.mixed.onnx", "--trt", "--fp16", "--precision-constraints", "obey", "--layer-precisions", "fc:float32")


def test_plan_without_fp32_nodes_is_plain_fp16_and_odd_names_are_reported():
    assert export_plan({"fp32_nodes": []}, "m.onnx", "trtexec").argv == ("trtexec", "--onnx=m.onnx", "--fp16", "--saveEngine=model.engine")
    out = export_plan({"fp32_nodes": [{"name": "a:b", "outputs": ["t"]}, {"name": "ok", "outputs": ["u"]}]}, "m.onnx", "trtexec")
    assert out.unnamed == ("a:b",) and "--layerPrecisions=ok:fp32" in out.argv


def test_bad_format_and_wrong_model_are_config_errors():
    with pytest.raises(ConfigError, match="trtexec"):
        export_plan(_plan(["fc"]), "m.onnx", "tensorrt11")
    with pytest.raises(ConfigError, match="does not have"):
        export_plan({"fp32_nodes": [{"name": "nope", "outputs": []}]}, "m.onnx", "trtexec", _model())


def test_show_as_trtexec_points_at_the_run_artifact(tmp_path, capsys):
    from fp16guard.store.runs import Store

    store = Store(str(tmp_path / "store"))
    plan = _plan(["fc"])
    with store.stage_run("net", "1", "r1") as staged:
        (staged.path / "plan.json").write_text(json.dumps(plan))
        onnx.save(to_mixed_precision(_model(), {"fc"}), str(staged.path / "model.mixed.onnx"))
        staged.commit(verified=True, reason="")
    assert main(["show", "net", "1", "--run", "r1", "--store", str(tmp_path / "store"), "--as", "trtexec"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    artifact = f"{store.run_url('net', '1', 'r1')}/model.mixed.onnx"
    assert out == [shlex.join(["trtexec", f"--onnx={artifact}", "--fp16", "--precisionConstraints=obey", "--layerPrecisions=fc:fp32", "--layerOutputTypes=fc:fp32", "--saveEngine=model.engine"])]
    assert main(["show", "net", "1", "--run", "r1", "--store", str(tmp_path / "store"), "--as", "polygraphy"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("polygraphy convert ") and lines[1].startswith("# or build and run in one step: polygraphy run ")
