"""The backends' names, as data: the one table both the settings and the registry read.

It sits in the lowest layer (docs/ARCHITECTURE.md) and imports no other fp16guard module, so
:mod:`fp16guard.settings` can check ``RunParameters.backend`` when parameters are parsed without
importing :mod:`fp16guard.backends` (which sits above it). :mod:`fp16guard.backends.registry` makes
backends from this table; nothing else compares backend names.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["BUILTIN", "DEFAULT_BACKEND", "REGISTERED", "backend_names"]

#: name -> ("module:factory", one-line description). The factory takes the requested providers;
#: modules are imported by the registry only when a backend is made.
BUILTIN: dict[str, tuple[str, str]] = {
    "onnxruntime": (
        "fp16guard.backends.onnxruntime:make_backend",
        "a mixed-precision ONNX model on onnxruntime (CUDA provider with real FP16 kernels when a GPU and onnxruntime-gpu are present, else CPU with FP16 storage emulation)",
    ),
    "tensorrt": ("fp16guard.backends.tensorrt.backend:make_backend", "a TensorRT engine with the plan's nodes in FP32"),
}

#: Backends added at run time (:func:`fp16guard.backends.registry.register`): name ->
#: (factory(providers) -> Backend, description). Filled by the registry only.
REGISTERED: dict[str, tuple[Callable[[Sequence[str] | None], Any], str]] = {}

DEFAULT_BACKEND = "onnxruntime"


def backend_names() -> tuple[str, ...]:
    """Known names, built-ins first, then registered ones (read when called, so a backend
    registered after :mod:`fp16guard.settings` was imported is accepted too)."""
    return tuple(dict.fromkeys([*BUILTIN, *REGISTERED]))

