"""fp16guard: run an ONNX model in FP16 where it is safe and worth it, proven against FP32.

The library package has no Prefect import: every stage is a pure function over paths,
arrays, ONNX protos and Arrow tables. ``tasks/`` and ``flows/`` wrap it for Prefect.

``fp16guard.convert`` and ``fp16guard.Result`` (:mod:`fp16guard.api`), ``ImageFolder`` and
``LoaderScript`` (:mod:`fp16guard.io.loaders`: data sources ``convert`` accepts) are loaded on first use,
so ``import fp16guard`` stays light (no onnx, onnxruntime or pyarrow import).
"""

from typing import Any

__version__ = "0.1.0"

#: Largest finite FP16 magnitude.
FP16_MAX = 65504.0

__all__ = ["FP16_MAX", "ImageFolder", "LoaderScript", "Result", "__version__", "convert"]

#: Public names served lazily by :func:`__getattr__`: name -> module that defines it.
_LAZY = {"convert": "fp16guard.api", "Result": "fp16guard.api", "ImageFolder": "fp16guard.io.loaders", "LoaderScript": "fp16guard.io.loaders"}


def __getattr__(name: str) -> Any:
    # Module-level __getattr__ (PEP 562): the API's heavy imports happen on first access only.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fp16guard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
