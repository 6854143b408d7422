"""What this machine has: the ``tensorrt`` module, an NVIDIA GPU and its name; the timing cache key.

The probe itself (:func:`require_tensorrt`, :func:`gpu_name`) lives in
:mod:`fp16guard.runners.tensorrt_env`, below both the runner and this backend (layers of
docs/ARCHITECTURE.md); it is re-exported here for the backend's modules.
Nothing is imported or probed at import time; each function looks when called.
"""

from __future__ import annotations

import re

from fp16guard.runners.tensorrt_env import gpu_name, require_tensorrt

__all__ = ["cache_key", "gpu_name", "require_tensorrt"]


def cache_key(gpu: str, tensorrt_version: str) -> str:
    """File-name-safe key of a timing cache: ``"NVIDIA_H100_80GB_HBM3__trt-10.12.0.36"``.

    Timing caches hold measured kernel timings, valid only for one GPU model and TensorRT build.
    """
    safe_gpu = re.sub(r"[^A-Za-z0-9._-]+", "_", gpu).strip("_") or "gpu"
    safe_ver = re.sub(r"[^A-Za-z0-9._-]+", "_", tensorrt_version).strip("_") or "unknown"
    return f"{safe_gpu}__trt-{safe_ver}"
