"""The one place that makes a backend from its name: name -> factory of a :class:`.base.Backend`.

Adding a backend is one new module with a ``make_backend(providers)`` factory plus one line in
:data:`fp16guard.backend_names.BUILTIN` (the table of names, kept in the lowest layer so the
settings can check a name without importing this package). Names are known without importing
the implementations (the CLI's ``--backend`` choices are read from here; runtimes load only when
a backend is made).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

from fp16guard.backend_names import BUILTIN, DEFAULT_BACKEND, REGISTERED, backend_names
from fp16guard.backends.base import Backend

__all__ = ["DEFAULT_BACKEND", "backend_module", "backend_names", "describe", "get_backend", "register", "released_artifact"]

# The table lives in the lowest layer (fp16guard.backend_names) so the settings can check a name
# without importing the backends; these are the same dict objects, not copies.
_BUILTIN = BUILTIN
_REGISTERED = REGISTERED


def register(name: str, factory: Callable[[Sequence[str] | None], Backend], description: str = "") -> None:
    """Register a backend made by ``factory(providers)`` under ``name`` (replaces a previous one).

    Side effect: the name is accepted by ``RunParameters.backend`` from then on (the settings
    read :func:`fp16guard.backend_names.backend_names` when they parse).
    """
    _REGISTERED[name] = (factory, description)


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
