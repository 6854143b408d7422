"""The example models really overflow FP16 on their data, and their shards load as holdout/calibration."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp16guard import FP16_MAX, examples
from fp16guard.io.shards import discover_shards, load_shard, prepare_feeds
from fp16guard.io.model import input_specs, load_model

NAMES = sorted(examples.EXAMPLES)


def _run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _expose_all(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out not in have:
                m.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    return m


def _all_fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """Independent, test-local model of an all-FP16 build: every float tensor a node reads
    (inputs, initializers, activations; Pow exponents excepted) and every graph output is
    rounded through FP16 storage, arithmetic stays FP32 (docs/FACTS.md #2). Graph outputs keep their
    names: their producers write ``<name>#pre``, which is rounded into ``<name>``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    outputs = {o.name for o in g.output}
    pre = {name: name + "#pre" for name in outputs}
    floats = {t.name for t in g.initializer if t.data_type == TensorProto.FLOAT} | {i.name for i in g.input}
    floats |= {o for n in g.node for o in n.output}
    nodes, rounded = [], {}

    def round_trip(src: str, dst: str) -> None:
        nodes.append(helper.make_node("Cast", [src], [dst + "#h"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", [dst + "#h"], [dst], to=TensorProto.FLOAT))

    for node in model.graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i, x in enumerate(new.input):
            if x in floats and not (node.op_type == "Pow" and i == 1):
                if x not in rounded:
                    rounded[x] = x + "#r"
                    round_trip(pre.get(x, x), rounded[x])
                new.input[i] = rounded[x]
        for i, x in enumerate(new.output):
            new.output[i] = pre.get(x, x)
        nodes.append(new)
    for name in outputs:
        round_trip(pre[name], name)
    del g.node[:]
    g.node.extend(nodes)
    return m


@pytest.mark.parametrize("name", NAMES)
def test_model_is_valid_named_dynamic_and_deterministic(name):
    model = examples.build_model(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == examples.OPSET
    assert all(n.name for n in model.graph.node)
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)
    for spec in input_specs(model):
        assert spec.shape[0] == "batch"
    assert examples.build_model(name).SerializeToString() == model.SerializeToString()
    assert examples.build_model(name, seed=1).SerializeToString() != model.SerializeToString()


@pytest.mark.parametrize("name", NAMES)
def test_fp32_run_is_finite_and_overflows_fp16(name):
    model = examples.build_model(name)
    feeds = examples.sample_inputs(name, 32, seed=5)
    acts = _run(_expose_all(model), feeds)
    assert all(np.isfinite(v).all() for v in acts.values()), "the FP32 model itself must be finite"
    peak_act = max(float(np.abs(v).max()) for v in acts.values())
    peak_const = max(float(np.abs(numpy_helper.to_array(t)).max()) for t in model.graph.initializer)
    peak_input = max(float(np.abs(v).max()) for v in feeds.values())
    assert max(peak_act, peak_const, peak_input) > FP16_MAX
    # Outputs stay small: the overflow is internal.
    for out in model.graph.output:
        assert np.abs(acts[out.name]).max() < 1e3


@pytest.mark.parametrize("name", NAMES)
def test_all_fp16_output_is_wrong(name):
    model = examples.build_model(name)
    feeds = examples.sample_inputs(name, 16, seed=2)
    ref = _run(model, feeds)
    got = _run(_all_fp16_storage(model), feeds)
    for out in model.graph.output:
        r, c = ref[out.name], got[out.name]
        wrong = (~np.isfinite(c)).any() or np.abs(c - r).max() > 0.5 * np.abs(r).max()
        assert wrong, f"{name}: all-FP16 output {out.name} is still right"


def test_rmsnorm_fp16_output_is_finite_but_zero():
    # docs/FACTS.md #4: no NaN, entirely wrong.
    model = examples.build_model("rmsnorm")
    feeds = examples.sample_inputs("rmsnorm", 8, seed=3)
    got = _run(_all_fp16_storage(model), feeds)["y"]
    assert np.isfinite(got).all()
    assert np.abs(got).max() == 0.0


def test_demo_all_fp16_gives_nan_and_is_small():
    model = examples.build_model("demo")
    assert model.ByteSize() < 400_000
    assert len(model.graph.node) >= 20
    got = _run(_all_fp16_storage(model), examples.sample_inputs("demo", 8, seed=4))["logits"]
    assert np.isnan(got).any()


def test_large_constant_is_above_fp16_range():
    model = examples.build_model("large_constant")
    peaks = {t.name: float(np.abs(numpy_helper.to_array(t)).max()) for t in model.graph.initializer}
    assert peaks["normalize/offset"] > FP16_MAX


def test_write_shards_sizes_seeds_and_loading(tmp_path):
    paths = examples.write_shards("demo", tmp_path / "calib", 3, [4, 1, 2], seed=11)
    assert [p.name for p in paths] == ["shard-0000.npz", "shard-0001.npz", "shard-0002.npz"]
    refs = discover_shards([str(tmp_path / "calib")])
    specs = input_specs(examples.build_model("demo"))
    sizes = [prepare_feeds(r, load_shard(r), specs)["pressure"].shape for r in refs]
    assert sizes == [(4, 16, 8), (1, 16, 8), (2, 16, 8)]
    again = examples.write_shards("demo", tmp_path / "again", 3, [4, 1, 2], seed=11)
    other = examples.write_shards("demo", tmp_path / "other", 3, [4, 1, 2], seed=12)
    a, b, c = (np.load(p[0])["pressure"] for p in (paths, again, other))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError):
        examples.write_shards("demo", tmp_path / "bad", 2, [4], seed=1)
    with pytest.raises(KeyError, match="unknown example"):
        examples.write_shards("nope", tmp_path / "bad", 1, 1, seed=1)


def test_save_model_round_trips_through_load_model(tmp_path):
    path = examples.save_model("attention", tmp_path / "m.onnx")
    loaded = load_model(path)
    assert [n.name for n in loaded.graph.node] == [n.name for n in examples.build_model("attention").graph.node]


@pytest.mark.parametrize("name", NAMES)
def test_input_or_output_plan_verifies_with_emulation(name, tmp_path):
    """With the team's convert + emulate: pin nodes whose float input or output exceeds 1e4
    (docs/FACTS.md #3); the mixed model verifies against FP32, the all-FP16 one fails."""
    from fp16guard.graph import convert
    from fp16guard.verify.compare import verify

    model = examples.build_model(name)
    examples.write_shards(name, tmp_path / "calib", 2, 16, seed=1)
    examples.write_shards(name, tmp_path / "holdout", 2, 8, seed=2)
    calib = {}
    for ref in discover_shards([str(tmp_path / "calib")]):
        for k, v in _run(_expose_all(model), load_shard(ref)).items():
            calib[k] = max(calib.get(k, 0.0), float(np.abs(v).max()))
    for ref in discover_shards([str(tmp_path / "calib")]):
        for k, v in load_shard(ref).items():
            calib[k] = max(calib.get(k, 0.0), float(np.abs(v).max()))
    for t in model.graph.initializer:
        calib[t.name] = float(np.abs(numpy_helper.to_array(t)).max())
    pinned = {n.name for n in model.graph.node if any(calib.get(x, 0.0) > 1e4 for x in [*n.input, *n.output])}
    holdout = discover_shards([str(tmp_path / "holdout")])
    mixed = verify(model, convert.to_mixed_precision(model, pinned), holdout)
    assert mixed["emulated"]
    assert mixed["passed"], mixed["reason"]
    full = verify(model, convert.to_mixed_precision(model, set()), holdout)
    assert not full["passed"]
