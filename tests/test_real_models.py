"""Real trained models from PyPI packages: default settings must give a verified plan.

The models ship inside small packages (``benchmarks/real_models/models.py``, ``small=True``):
faster-whisper's Silero VAD v6 (an LSTM run over a chunk sequence, state inputs without a batch
axis) and basic-pitch's audio-to-MIDI network (a CQT front end with ``log(x*x + 1e-10)``). They
are downloaded with ``pip download --no-deps`` (pinned versions) into
``$FP16GUARD_REAL_CACHE`` or ``~/.cache/fp16guard-real``; without network access the tests skip
with pip's reason. Inputs are built offline with numpy only (formant-synthesised speech,
harmonic notes), the same on every machine.

The library path is the flow's, without Prefect: statistics per calibration shard, the plan with
the default strategy and repair on calibration data, the mixed model, verification against FP32
on holdout data through FP16 storage emulation — each with default settings. The heavier models
run only in ``python -m benchmarks.real_models.run``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.real_models import models as real

pytestmark = pytest.mark.real_models

SMALL = [m for m in real.MODELS if m.small]
#: Models whose default-settings run takes more than 20 s on a 2-core machine (basic-pitch: about
#: 40 s, nearly all of it the repair search's shrink phase, ~75 calibration checks); they run in
#: the slow suite (``pytest -m slow``), the others in the default one.
SLOW = {"basic-pitch"}
assert SLOW <= {m.name for m in SMALL}, "SLOW names a model that is not among the small ones"


def _shards(tmp: Path, role: str, shards: list[dict]):
    from fp16guard.io.shards import discover_shards

    folder = tmp / role
    folder.mkdir()
    for i, feeds in enumerate(shards):
        np.savez(folder / f"{i:03d}.npz", **feeds)
    return discover_shards([folder], role)


def _trim(spec, feeds: dict) -> dict:
    """The first sample of a shard when the model's inputs share a leading batch axis."""
    if spec.test_samples is None:
        return feeds
    return {k: v[: spec.test_samples] for k, v in feeds.items()}


def plan_and_verify(model_path: Path, calib, holdout, out: Path) -> tuple[dict, dict]:
    """The flow's library calls with default settings: stats → plan (+ repair) → build → verify.

    Returns:
        ``(plan dict, verification report)``.
    """
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model
    from fp16guard.plan.records import Plan
    from fp16guard.plan.repair import repair_plan
    from fp16guard.plan.strategies import model_for_plan, plan_model
    from fp16guard.settings import PlanSettings, VerifySettings
    from fp16guard.stats.collect import shard_stats, write_stats_files
    from fp16guard.stats.schema import read_stats
    from fp16guard.verify.compare import verify

    plan_settings, verify_settings = PlanSettings(), VerifySettings()
    write_stats_files([shard_stats(model_path, ref) for ref in calib], out / "stats.parquet")
    model = load_model(model_path)
    data, planned = plan_model(model, read_stats(out / "stats.parquet"), plan_settings, weights_dir=model_path.parent)
    plan = repair_plan(planned, Plan.from_dict(data), calib, plan_settings, verify_settings).to_dict()
    mixed = to_mixed_precision(model_for_plan(load_model(model_path), plan), {n["name"] for n in plan["fp32_nodes"]})
    return plan, verify(model_path, mixed, holdout, verify_settings)


@pytest.mark.parametrize("spec", [pytest.param(m, id=m.name, marks=[pytest.mark.slow] if m.name in SLOW else []) for m in SMALL])
def test_small_real_model_verifies_with_default_settings(spec, tmp_path, monkeypatch):
    from benchmarks.real_models import media
    from benchmarks.real_models.fetch import FetchError, cache_dir, fetch_member

    monkeypatch.setattr(media, "SPEECH_ENGINE", "formant")  # same data with or without espeak-ng

    try:
        model_path = fetch_member(spec.package, spec.version, spec.member)
    except FetchError as exc:
        pytest.skip(f"{spec.package}=={spec.version} not downloadable here (needs PyPI): {exc}")
    calib_feeds, holdout_feeds = spec.build(model_path, cache_dir(), np.random.default_rng(0))
    # Keep the suite fast: one calibration and one holdout shard, and for models with a batch
    # axis one sample of each (the benchmark runs them all).
    calib_feeds, holdout_feeds = [_trim(spec, f) for f in calib_feeds[:1]], [_trim(spec, f) for f in holdout_feeds[:1]]
    calib, holdout = _shards(tmp_path, "calibration", calib_feeds), _shards(tmp_path, "holdout", holdout_feeds)

    plan, report = plan_and_verify(model_path, calib, holdout, tmp_path)

    assert report["passed"], f"{spec.name}: {report['reason']} (FP32 nodes {plan['counts']})"
    for name, fig in report["outputs"].items():
        assert fig.get("nonfinite", 0) == 0, name
    # Not trivially all-FP32: some float node really runs in FP16.
    assert plan["counts"]["fp16"] > 0, plan["counts"]


# ------------------------------------------------------------------ the benchmark harness itself


def test_worst_error_never_reports_a_number_for_a_nonfinite_output():
    from benchmarks.real_models.lib_run import worst_error

    report = {"outputs": {"a": {"kind": "float", "max_rel_error": 0.001, "nonfinite": 0},
                          "b": {"kind": "float", "max_rel_error": None, "nonfinite": 12}}}
    worst = worst_error(report)
    assert worst["value"] is None and "non-finite" in worst["text"] and worst["nonfinite"] == 12
    report["outputs"]["b"] = {"kind": "float", "max_rel_error": float("nan"), "nonfinite": 0}
    assert worst_error(report)["value"] is None
    report["outputs"]["b"] = {"kind": "float", "max_rel_error": 0.004, "nonfinite": 0}
    assert worst_error(report)["value"] == 0.004


def test_flops_and_fp16_share_of_a_tiny_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.real_models.flops import artifact_share
    from fp16guard.graph.convert import to_mixed_precision

    w1 = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.ones((8 * 6 * 6, 4), np.float32), "w2")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"), helper.make_node("MatMul", ["f", "w2"], ["y"], name="mm")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w1, w2, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    conv = 2.0 * (2 * 8 * 6 * 6) * (3 * 3 * 3)
    mm = 2.0 * (2 * 4) * (8 * 6 * 6)
    share = artifact_share(model, to_mixed_precision(model, {"mm"}), feeds)
    assert share.flops_total == conv + mm
    assert share.flops_fp16 == conv and share.compute_nodes == 2 and share.compute_nodes_fp16 == 1
    assert artifact_share(model, model, feeds).share_flops == 0.0


def test_stability_compares_sets_by_cost():
    from benchmarks.stability import compare_sets

    flops = {"a": 90.0, "b": 10.0, "c": 0.0}
    nbytes = {"a": 1.0, "b": 1.0, "c": 1.0}
    pairs = compare_sets([{"a", "b"}, {"a"}, {"a", "c"}], flops, nbytes)
    by_pair = {tuple(p["pair"]): p for p in pairs}
    assert by_pair[(1, 2)]["differ_share_of_union_cost"] == 0.1
    assert by_pair[(2, 3)]["differ_share_of_union_cost"] == 0.0  # differ only in a node without FLOPs
    assert by_pair[(1, 3)]["differ_nodes"] == 2


def test_library_runner_records_one_small_real_model(tmp_path, monkeypatch):
    from benchmarks.real_models import media
    from benchmarks.real_models.fetch import FetchError, cache_dir
    from benchmarks.real_models.lib_run import run_model, spec_by_name

    monkeypatch.setattr(media, "SPEECH_ENGINE", "formant")
    spec = spec_by_name("silero-vad-v6-seq")
    try:
        rec = run_model(spec, cache_dir(), tmp_path / "out", seed=0)
    except FetchError as exc:
        pytest.skip(f"{spec.package}=={spec.version} not downloadable here (needs PyPI): {exc}")
    assert rec["nodes_total"] > 0 and 0 <= rec["fp32_nodes"] <= rec["nodes_total"]
    assert rec["holdout"]["passed"] is True and rec["holdout"]["worst"]["value"] is not None
    assert 0.0 <= rec["share"]["share_flops"] <= 1.0 and rec["share"]["compute_nodes"] > 0
    assert (tmp_path / "out" / "model.mixed.onnx").exists() and (tmp_path / "out" / "sample.npz").exists()
    assert set(rec["seconds"]) >= {"stats", "plan", "build", "verify", "total"}
