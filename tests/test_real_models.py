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


@pytest.mark.parametrize("spec", SMALL, ids=[m.name for m in SMALL])
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
