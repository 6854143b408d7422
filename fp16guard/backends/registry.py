"""The one place that knows backend names: name -> factory of a :class:`.base.Backend`.

Adding a backend is one new module with a ``make_backend(providers)`` factory plus one line in
:data:`_BUILTIN`. Names are known without importing the implementations (the settings' choices
and the CLI's ``--backend`` are read from here at import time; runtimes load only when a backend
is made).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from fp16guard.backends.base import Backend

__all__ = ["DEFAULT_BACKEND", "backend_module", "backend_names", "describe", "get_backend", "register", "released_artifact"]

#: name -> ("module:factory", one-line description). The factory takes the requested providers.
_BUILTIN: dict[str, tuple[str, str]] = {
    "onnxruntime": (
        "fp16guard.backends.onnxruntime:make_backend",
        "a mixed-precision ONNX model on onnxruntime (CUDA provider with real FP16 kernels when a GPU and onnxruntime-gpu are present, else CPU with FP16 storage emulation)",
    ),
    "tensorrt": ("fp16guard.backends.tensorrt.backend:make_backend", "a TensorRT engine with the plan's nodes in FP32"),
}
_REGISTERED: dict[str, tuple[Callable[[Sequence[str] | None], Backend], str]] = {}

DEFAULT_BACKEND = "onnxruntime"


def register(name: str, factory: Callable[[Sequence[str] | None], Backend], description: str = "") -> None:
    """Register a backend made by ``factory(providers)`` under ``name`` (replaces a previous one).

    Run-parameter validation reads the names at import time: register before importing
    :mod:`fp16guard.settings` for the new name to be accepted there.
    """
    _REGISTERED[name] = (factory, description)


def backend_names() -> tuple[str, ...]:
    """Registered names, built-ins first."""
    return tuple(dict.fromkeys([*_BUILTIN, *_REGISTERED]))


def describe(name: str) -> str:
    """One line about backend ``name`` (for help texts)."""
    if name in _REGISTERED:
        return _REGISTERED[name][1]
    return _BUILTIN[name][1]


def backend_module(name: str | None) -> str:
    """The module that makes backend ``name`` (default :data:`DEFAULT_BACKEND`), without
    importing it: what a cache key must follow, since the import here is by string.

    Raises:
        ConfigError: unknown name.
    """
    from fp16guard.errors import ConfigError

    name = name or DEFAULT_BACKEND
    if name in _REGISTERED:
        return _REGISTERED[name][0].__module__
    if name not in _BUILTIN:
        raise ConfigError(f"backend {name!r} is not known; expected one of {', '.join(backend_names())}")
    return _BUILTIN[name][0].partition(":")[0]


def get_backend(name: str | None, providers: Sequence[str] | None = None) -> Backend:
    """Make the backend ``name`` (default :data:`DEFAULT_BACKEND`) for ``providers``.

    Args:
        name: a registered name.
        providers: onnxruntime providers the user asked for; None, empty or ``["auto"]`` lets the
            backend choose (CUDA when usable, else CPU).

    Raises:
        ConfigError: unknown name (one line listing the known ones).
    """
    from fp16guard.errors import ConfigError

    name = name or DEFAULT_BACKEND
    if name in _REGISTERED:
        return _REGISTERED[name][0](providers)
    if name not in _BUILTIN:
        raise ConfigError(f"backend {name!r} is not known; expected one of {', '.join(backend_names())}")
    module, _, attr = _BUILTIN[name][0].partition(":")
    factory: Callable[[Sequence[str] | None], Backend] = getattr(importlib.import_module(module), attr)
    return factory(providers)


def released_artifact(backend_record: dict[str, Any] | None) -> str:
    """File name of the released artifact of a stored run, from its manifest's ``backend``
    record (runs written before the record named its artifact: by backend name)."""
    record = backend_record or {}
    if record.get("artifact"):
        return str(record["artifact"])
    if record.get("engine") or record.get("name") == "tensorrt" or record.get("backend") == "tensorrt":
        return "model.engine"
    return "model.mixed.onnx"
