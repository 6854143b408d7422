"""Calibration/holdout data: every input format, shard digests, layout checks, slicing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fp16guard.io.shards import (
    ShardRef,
    check_layout,
    discover_shards,
    load_shard,
    peek_shard,
    prepare_feeds,
    shard_context,
    shard_digest,
    slice_size,
)
from fp16guard.errors import DataError, NonFiniteError
from fp16guard.io.model import InputSpec

SPECS = [InputSpec("x", np.dtype("float32"), ("batch", 4)), InputSpec("ids", np.dtype("int64"), ("batch",))]


def _npz(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, x=rng.standard_normal((n, 4)).astype(np.float32), ids=np.arange(n))
    return path


def _polygraphy_json(path: Path, feeds: list[dict]) -> Path:
    from polygraphy.json import save_json

    save_json(feeds, str(path))
    return path


def test_folder_glob_file_and_json_formats(tmp_path):
    a, b = _npz(tmp_path / "d" / "a.npz", 2), _npz(tmp_path / "d" / "b.npz", 3)
    c = _npz(tmp_path / "other" / "c.npz", 1)
    js = _polygraphy_json(tmp_path / "inputs.json", [{"x": np.ones((2, 4), np.float32), "ids": np.arange(2)}] * 2 + [{"x": np.zeros((1, 4), np.float32), "ids": np.arange(1)}])
    assert [s.name for s in discover_shards([str(tmp_path / "d")])] == [str(a), str(b)]
    assert [s.name for s in discover_shards([str(tmp_path / "*" / "*.npz")])] == [str(a), str(b), str(c)]
    assert [s.name for s in discover_shards([str(c)])] == [str(c)]
    json_shards = discover_shards([str(js)])
    assert [s.index for s in json_shards] == [0, 1, 2] and json_shards[2].name == f"{js}[2]"
    assert load_shard(json_shards[2])["x"].shape == (1, 4)
    # Several locations, with duplicates kept once in first-seen order.
    both = discover_shards([str(c), str(tmp_path / "d"), str(a), str(js)])
    assert [s.name for s in both] == [str(c), str(a), str(b), f"{js}[0]", f"{js}[1]", f"{js}[2]"]


def test_json_feed_digest_is_content_based(tmp_path):
    feed = {"x": np.ones((2, 4), np.float32), "ids": np.arange(2)}
    one = discover_shards([str(_polygraphy_json(tmp_path / "one.json", [feed]))])
    two = discover_shards([str(_polygraphy_json(tmp_path / "two.json", [{"x": np.zeros((1, 4), np.float32), "ids": np.arange(1)}, feed]))])
    # The same feed dict hashes the same wherever it sits: adding feeds does not invalidate caches.
    assert shard_digest(one[0]) == shard_digest(two[1]) != shard_digest(two[0])


@pytest.mark.parametrize(
    "paths, message",
    [
        (["nowhere"], "does not exist"),
        (["*.nomatch.npz"], "matches no file"),
        ([], "no calibration data given"),
        (["EMPTY"], "holds no .npz"),
        (["TXT"], "expected .npz"),
        (["BADJSON"], "not a Polygraphy JSON"),
    ],
)
def test_discovery_errors(tmp_path, paths, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "bad.json").write_text("{not json")
    subst = {"EMPTY": str(tmp_path / "empty"), "TXT": str(tmp_path / "notes.txt"), "BADJSON": str(tmp_path / "bad.json")}
    with pytest.raises(DataError, match=message):
        discover_shards([subst.get(p, str(tmp_path / p) if p != "*.nomatch.npz" else str(tmp_path / p)) for p in paths])


def test_peek_reads_headers_like_load(tmp_path):
    ref = ShardRef("s", str(_npz(tmp_path / "s.npz", 5)))
    assert peek_shard(ref) == {k: (v.dtype, v.shape) for k, v in load_shard(ref).items()}
    assert check_layout(ref, peek_shard(ref), SPECS) == 5


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"ids": (np.dtype("int64"), (2,))}, "has no input 'x'"),
        ({"x": (np.dtype("float32"), (2, 4, 1)), "ids": (np.dtype("int64"), (2,))}, "rank 3"),
        ({"x": (np.dtype("float32"), (2, 5)), "ids": (np.dtype("int64"), (2,))}, "axis 1 must be 4"),
        ({"x": (np.dtype("float32"), (2, 4)), "ids": (np.dtype("float32"), (2,))}, "dtype float32"),
        ({"x": (np.dtype("float32"), (2, 4)), "ids": (np.dtype("int64"), (3,))}, "same batch size"),
        ({"x": (np.dtype("float32"), (0, 4)), "ids": (np.dtype("int64"), (0,))}, "no samples"),
    ],
)
def test_layout_errors_name_shard_and_expectation(layout, message):
    with pytest.raises(DataError, match=message) as info:
        check_layout(ShardRef("calib/s0.npz", "calib/s0.npz"), layout, SPECS)
    assert "calib/s0.npz" in str(info.value)


def test_prepare_casts_and_rejects_nonfinite():
    ref = ShardRef("s", "s")
    feeds = prepare_feeds(ref, {"x": np.ones((2, 4), np.float64), "ids": np.arange(2, dtype=np.int32), "extra": np.zeros(3)}, SPECS)
    assert feeds["x"].dtype == np.float32 and feeds["ids"].dtype == np.int64 and "extra" not in feeds
    bad = np.ones((2, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="input 'x' holds 1 NaN/inf"):
        prepare_feeds(ref, {"x": bad, "ids": np.arange(2)}, SPECS)


def test_slice_size_prefers_static_batch():
    static = [InputSpec("x", np.dtype("float32"), (2, 4))]
    assert slice_size(static, 8, None) == 2
    assert slice_size(static, 8, 4) == 2
    with pytest.raises(DataError, match="multiple"):
        slice_size(static, 7, None)
    assert slice_size(SPECS, 10, 3) == 3 and slice_size(SPECS, 10, None) == 10 and slice_size(SPECS, 2, 50) == 2


def test_shard_context_names_the_shard():
    with pytest.raises(DataError, match=r"^shard a\.npz: boom"):
        with shard_context(ShardRef("a.npz", "a.npz")):
            raise DataError("boom")
