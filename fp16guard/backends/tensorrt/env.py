"""What this machine has: the ``tensorrt`` module, an NVIDIA GPU and its name.

Nothing is imported or probed at import time; each function looks when called.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

from fp16guard.backends.tensorrt.errors import TensorRTUnavailable


def require_tensorrt():
    """Import and return the ``tensorrt`` module.

    Raises:
        TensorRTUnavailable: it is not installed or fails to load (e.g. no CUDA libraries).
    """
    try:
        import tensorrt  # noqa: PLC0415 - lazy on purpose: optional dependency
    except Exception as exc:  # ImportError, or OSError from missing shared libraries
        raise TensorRTUnavailable(f"import tensorrt failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(tensorrt, "Builder"):
        # PyPI's "tensorrt" placeholder packages install a module without the bindings.
        raise TensorRTUnavailable(f"the installed tensorrt module ({getattr(tensorrt, '__file__', '?')}) has no Builder; it is not a TensorRT build")
    return tensorrt


def gpu_name(device: int = 0) -> str:
    """Name of CUDA device ``device`` (e.g. ``"NVIDIA H100 80GB HBM3"``), via the CUDA driver API.

    Uses ``libcuda`` through ctypes (``cuInit``, ``cuDeviceGet``, ``cuDeviceGetName``), so it
    needs neither PyTorch nor the CUDA toolkit, only the driver.

    Raises:
        TensorRTUnavailable: no driver library, no device, or the driver reports an error.
    """
    lib = None
    for candidate in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if not candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
            break
        except OSError:
            continue
    if lib is None:
        raise TensorRTUnavailable("no NVIDIA driver library (libcuda) found")
    status = lib.cuInit(0)
    if status != 0:
        raise TensorRTUnavailable(f"cuInit failed with CUDA error {status} (no usable GPU)")
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        raise TensorRTUnavailable(f"CUDA reports {count.value} device(s); device {device} is needed")
    handle = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(handle), device) != 0:
        raise TensorRTUnavailable(f"cuDeviceGet({device}) failed")
    buf = ctypes.create_string_buffer(256)
    if lib.cuDeviceGetName(buf, len(buf), handle) != 0:
        raise TensorRTUnavailable(f"cuDeviceGetName({device}) failed")
    return buf.value.decode("utf-8", "replace").strip()


def cache_key(gpu: str, tensorrt_version: str) -> str:
    """File-name-safe key of a timing cache: ``"NVIDIA_H100_80GB_HBM3__trt-10.12.0.36"``.

    Timing caches hold measured kernel timings, valid only for one GPU model and TensorRT build.
    """
    safe_gpu = re.sub(r"[^A-Za-z0-9._-]+", "_", gpu).strip("_") or "gpu"
    safe_ver = re.sub(r"[^A-Za-z0-9._-]+", "_", tensorrt_version).strip("_") or "unknown"
    return f"{safe_gpu}__trt-{safe_ver}"
