"""Backend choice by TensorRT version string (no TensorRT needed)."""

import pytest

from fp16guard.backends.tensorrt.choose import choose_mode, parse_version
from fp16guard.backends.tensorrt.errors import TypingModeError
from fp16guard.backends.tensorrt.env import cache_key
from fp16guard.errors import ConfigError


@pytest.mark.parametrize(
    "text, expected",
    [("8.6.1.post1", (8, 6, 1)), ("10.12.0.36", (10, 12, 0)), ("11.0", (11, 0, 0)), (" 10.3.0", (10, 3, 0))],
)
def test_parse_version(text, expected):
    assert parse_version(text) == expected


def test_parse_version_rejects_garbage():
    with pytest.raises(TypingModeError, match="not of the form"):
        parse_version("ten")


@pytest.mark.parametrize(
    "version, requested, mode",
    [
        ("8.6.1", "auto", "weak"),
        ("10.0.1", "auto", "weak"),
        ("10.12.0.36", "auto", "weak"),
        ("10.12.0.36", "strong", "strong"),
        ("10.16.1", "weak", "weak"),
        ("11.0.0", "auto", "strong"),
        ("11.4.1", "strong", "strong"),
    ],
)
def test_choice_by_version(version, requested, mode):
    choice = choose_mode(version, requested)
    assert choice.mode == mode
    assert choice.requested == requested
    assert choice.to_dict()["tensorrt_version"] == version
    assert choice.reason.startswith("auto" if requested == "auto" else "requested")


@pytest.mark.parametrize(
    "version, requested, message",
    [
        ("11.0.0", "weak", "no weak typing"),
        ("10.11.0", "strong", "10.12 or newer"),
        ("8.5.3", "auto", "too old"),
        ("10.12.0", "fp16", "unknown"),
    ],
)
def test_impossible_choices_are_user_errors(version, requested, message):
    with pytest.raises(TypingModeError, match=message) as info:
        choose_mode(version, requested)
    assert isinstance(info.value, ConfigError)
    assert "\n" not in str(info.value)


def test_cache_key_is_a_safe_file_name():
    key = cache_key("NVIDIA H100 80GB HBM3", "10.12.0.36")
    assert key == "NVIDIA_H100_80GB_HBM3__trt-10.12.0.36"
    assert "/" not in cache_key("a/b", "1/2")
    assert cache_key("NVIDIA H200", "10.12.0.36") != key
