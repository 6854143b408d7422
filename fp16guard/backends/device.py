"""The name of the device a run computes on, for records and cache keys of timings."""

from __future__ import annotations

import platform
from typing import Sequence

__all__ = ["device_name"]


def device_name(providers: Sequence[str] | None) -> str:
    """``"NVIDIA H200"`` (CUDA device 0, via the driver) when the first provider is CUDA, else
    ``"cpu: <processor>"``. Never raises: an unreadable GPU name is ``"CUDA device (name unknown)"``."""
    if providers and providers[0] == "CUDAExecutionProvider":
        from fp16guard.backends.tensorrt.env import gpu_name

        try:
            return gpu_name(0)
        except Exception:
            return "CUDA device (name unknown)"
    return f"cpu: {platform.processor() or platform.machine() or 'unknown'}"
