"""Verification split over holdout groups merges into exactly one pass's verdict (issue 18).

No server: the library's comparison on real onnxruntime, the demo model and its holdout cut
into small shards. Each grouping's comparisons, merged in shard order, must give the report one
pass over all shards gives, float for float (the cosine's sums are added per shard, then in
shard order, whatever the split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fp16guard.io.shards import discover_shards
from fp16guard.settings import OutputGate, VerifySettings
from fp16guard.verify.compare import collect_comparison, merge_comparisons, splittable, verify

#: Groupings of 7 shards (consecutive indices), as the flow's groups would be.
GROUPINGS = [
    [[0, 1, 2, 3, 4, 5, 6]],
    [[0], [1], [2], [3], [4], [5], [6]],
    [[0, 1, 2], [3, 4, 5, 6]],
    [[0, 1], [2, 3, 4], [5], [6]],
]


def cut_holdout(src: str, dest: Path, sizes=(5, 9, 3, 11, 7, 13, 16)) -> list:
    """The demo holdout (64 samples) as shards of ``sizes`` samples, in order."""
    arrays = [dict(np.load(f)) for f in sorted(Path(src).glob("*.npz"))]
    whole = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
    assert sum(sizes) == len(next(iter(whole.values())))
    dest.mkdir()
    start = 0
    for i, n in enumerate(sizes):
        np.savez(dest / f"part-{i:02d}.npz", **{k: v[start:start + n] for k, v in whole.items()})
        start += n
    return discover_shards([str(dest)], "holdout")


@pytest.fixture(scope="module")
def setup(demo_files, tmp_path_factory):
    import fp16guard

    tmp = tmp_path_factory.mktemp("fanout")
    shards = cut_holdout(demo_files["holdout"], tmp / "holdout")
    # fp16guard's own artifact for the demo: FP16 with a small, real error on every output.
    candidate = tmp / "mixed.onnx"
    fp16guard.convert(demo_files["model"], demo_files["calib"], demo_files["holdout"], output=str(candidate))
    return demo_files["model"], str(candidate), shards


def _split(model, candidate, shards, grouping, settings):
    comparisons = []
    for group in grouping:
        with collect_comparison() as seen:
            verify(model, candidate, [shards[i] for i in group], settings)
        assert [p.shards[0] for p in seen.parts] == [shards[i].name for i in group]
        comparisons.append(seen)
    return merge_comparisons(comparisons, settings)


def _comparable(report: dict) -> dict:
    # execution/emulated/providers are set by verify() around the comparison, not merged here
    return {k: v for k, v in report.items() if k not in ("execution", "emulated", "providers")}


@pytest.mark.parametrize("grouping", GROUPINGS, ids=["one", "each", "3+4", "2+3+1+1"])
def test_merged_groups_give_the_single_pass_report(setup, grouping):
    model, candidate, shards = setup
    settings = VerifySettings(max_rel_error=0.5, output_gates={"logits": OutputGate(gate="top1", min_agreement=0.9)})
    single = _comparable(verify(model, candidate, shards, settings))
    merged = _split(model, candidate, shards, grouping, settings)
    assert merged == single  # every figure, float for float, and the verdict and its reason
    fig = single["outputs"]["logits"]
    assert single["samples"] == 64 and 0 < fig["cosine"] < 1 and fig["max_abs_error"] > 0
    assert fig["checks"]["positions"] == 64 * (fig["checks"]["positions"] // 64)


def test_a_failing_verdict_merges_the_same(setup):
    """A gate the candidate fails: the same reason line (worst output first) from any split."""
    model, candidate, shards = setup
    settings = VerifySettings(max_rel_error=1e-6, min_cosine=0.999999999)
    single = _comparable(verify(model, candidate, shards, settings))
    assert not single["passed"] and "(and 1 more failure(s))" in single["reason"]
    assert _split(model, candidate, shards, GROUPINGS[3], settings) == single


class _MeanAbs:
    """A user's accumulator: mean |cand - fp32| (a float sum), with or without ``merge``."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, ref, cand):
        self.total += float(np.abs(np.asarray(cand, np.float64) - ref).sum())
        self.count += int(np.asarray(ref).size)

    def figures(self):
        return {"mean_abs_error": self.total / max(1, self.count)}


class _MergeableMeanAbs(_MeanAbs):
    def merge(self, other):
        self.total += other.total
        self.count += other.count


class _Metric:
    """A custom gate (module:factory) whose accumulator is ``acc``."""

    name = "custom"

    def __init__(self, acc):
        self.acc = acc

    def accumulator(self):
        return self.acc()

    def judge(self, output, fig):
        return []

    def score(self, fig):
        return 0.0

    def tightened(self, factor):
        return self


def mergeable(gate):
    return _Metric(_MergeableMeanAbs)


def unmergeable(gate):
    return _Metric(_MeanAbs)


def test_custom_accumulators_merge_or_keep_the_holdout_whole(setup):
    model, candidate, shards = setup
    merging = VerifySettings(output_gates={"logits": OutputGate(gate="custom", metric=f"{__name__}:mergeable")})
    plain = VerifySettings(output_gates={"logits": OutputGate(gate="custom", metric=f"{__name__}:unmergeable")})
    assert splittable(VerifySettings()) and splittable(merging) and not splittable(plain)
    single = _comparable(verify(model, candidate, shards, merging))
    assert single["outputs"]["logits"]["checks"]["mean_abs_error"] > 0
    assert _split(model, candidate, shards, GROUPINGS[2], merging) == single
    # Without merge the one accumulator sees every slice in order: the same figure as a merging one
    # over one group of all shards fed slice by slice would give (sums in another order: close).
    whole = _comparable(verify(model, candidate, shards, plain))
    assert whole["outputs"]["logits"]["checks"]["mean_abs_error"] == pytest.approx(single["outputs"]["logits"]["checks"]["mean_abs_error"], rel=1e-12)


def test_groups_of_other_models_are_refused(setup, demo_files):
    model, candidate, shards = setup
    with collect_comparison() as a:
        verify(model, candidate, shards[:1])
    with collect_comparison() as b:
        verify(model, candidate, shards[1:2])
    b.outputs = ["other"]
    with pytest.raises(ValueError, match="different outputs"):
        merge_comparisons([a, b], VerifySettings())
    with pytest.raises(ValueError, match="no comparison"):
        merge_comparisons([], VerifySettings())
