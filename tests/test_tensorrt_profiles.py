"""Optimisation profiles from observed shapes (no TensorRT needed)."""

import numpy as np
import pytest

from fp16guard.backends.tensorrt.profiles import check_within, derive_profile, is_dynamic, observed_shapes, slice_shapes
from fp16guard.io.shards import discover_shards
from fp16guard.errors import DataError
from fp16guard.io.model import InputSpec, input_specs

from tensorrt_models import tiny_model


def spec(name, shape, dtype="float32"):
    return InputSpec(name, np.dtype(dtype), shape)


def test_min_opt_max_per_dynamic_dimension():
    specs = [spec("x", ("batch", "seq", 8)), spec("mask", ("batch", "seq"), "int64")]
    seen = [
        {"x": (4, 10, 8), "mask": (4, 10)},
        {"x": (4, 32, 8), "mask": (4, 32)},
        {"x": (1, 32, 8), "mask": (1, 32)},
        {"x": (4, 7, 8), "mask": (4, 7)},
    ]
    profile = derive_profile(specs, seen)
    assert profile["x"] == {"min": [1, 7, 8], "opt": [4, 32, 8], "max": [4, 32, 8]}
    assert profile["mask"] == {"min": [1, 7], "opt": [4, 32], "max": [4, 32]}
    assert list(profile) == ["x", "mask"]


def test_opt_is_the_most_frequent_size_and_ties_go_up():
    specs = [spec("x", (None, 3))]
    assert derive_profile(specs, [{"x": (2, 3)}, {"x": (2, 3)}, {"x": (8, 3)}])["x"]["opt"] == [2, 3]
    assert derive_profile(specs, [{"x": (2, 3)}, {"x": (8, 3)}])["x"]["opt"] == [8, 3]


def test_static_model_needs_no_observation():
    specs = [spec("x", (1, 3, 4))]
    assert not is_dynamic(specs)
    assert derive_profile(specs, []) == {"x": {"min": [1, 3, 4], "opt": [1, 3, 4], "max": [1, 3, 4]}}


def test_dynamic_input_never_seen_is_a_data_error():
    with pytest.raises(DataError, match="no calibration or holdout feed"):
        derive_profile([spec("x", ("batch", 8))], [{"other": (1, 8)}])


def test_contradicting_static_dimension_is_a_data_error():
    with pytest.raises(DataError, match="axis 1 must be 8"):
        derive_profile([spec("x", ("batch", 8))], [{"x": (2, 9)}])
    with pytest.raises(DataError, match="rank"):
        derive_profile([spec("x", None)], [{"x": (2, 9)}, {"x": (2, 9, 1)}])


def test_check_within():
    profile = {"x": {"min": [1, 8], "opt": [4, 8], "max": [16, 8]}}
    assert check_within(profile, {"x": (16, 8)}) == []
    assert check_within(profile, {"x": (17, 8)}) != []
    assert check_within(profile, {"x": (2, 8, 1)}) != []


def test_slices_follow_batch_size():
    feeds = {"x": np.zeros((10, 8), np.float32)}
    assert slice_shapes(feeds, 4) == [{"x": (4, 8)}, {"x": (4, 8)}, {"x": (2, 8)}]


def test_observed_shapes_from_real_shards(tmp_path):
    # Two calibration shards and one holdout shard of different batch sizes, run with --batch-size 4.
    np.savez(tmp_path / "a.npz", x=np.ones((6, 8), np.float32))
    np.savez(tmp_path / "b.npz", x=np.ones((3, 8), np.float64))  # cast to float32 like any run
    (tmp_path / "hold").mkdir()
    np.savez(tmp_path / "hold" / "c.npz", x=np.ones((4, 8), np.float32))
    refs = discover_shards([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]) + discover_shards([str(tmp_path / "hold")], "holdout")
    specs = input_specs(tiny_model())
    shapes = observed_shapes(refs, specs, batch_size=4)
    assert shapes == [{"x": (4, 8)}, {"x": (2, 8)}, {"x": (3, 8)}, {"x": (4, 8)}]
    assert derive_profile(specs, shapes)["x"] == {"min": [2, 8], "opt": [4, 8], "max": [4, 8]}


def test_observed_shapes_reject_bad_shard(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((2, 5), np.float32))
    with pytest.raises(DataError, match="axis 1 must be 8"):
        observed_shapes(discover_shards([str(tmp_path / "a.npz")]), input_specs(tiny_model()))
