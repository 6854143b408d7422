"""What this machine has for TensorRT: the ``tensorrt`` module, an NVIDIA GPU and its name.

The probe sits with the runners (layer 2 of docs/ARCHITECTURE.md), below the TensorRT backend,
so that both :mod:`fp16guard.runners.tensorrt` and :mod:`fp16guard.backends.tensorrt` can use it
(the backend re-exports it from :mod:`fp16guard.backends.tensorrt.env` and ``.errors``).
Nothing is imported or probed at import time; each function looks when called.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from fp16guard.errors import UserError

__all__ = ["UNAVAILABLE_HINT", "TensorRTUnavailable", "gpu_name", "require_tensorrt"]

#: The one line a user sees when this backend cannot run on the machine.
UNAVAILABLE_HINT = (
    "--backend tensorrt needs the tensorrt package and an NVIDIA GPU; install fp16guard[tensorrt] on a GPU worker"
)


class TensorRTUnavailable(UserError):
    """``tensorrt`` cannot be imported, or no NVIDIA GPU is visible (exit status 2)."""

    def __init__(self, detail: str = ""):
        super().__init__(UNAVAILABLE_HINT + (f" ({detail})" if detail else ""))
        self.detail = detail


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
