"""TensorRT backend: build an FP16 engine with FP32 islands from a plan, check it, run it.

Thin and isolated: only the probe (:mod:`fp16guard.runners.tensorrt_env`, re-exported by
:mod:`.env`) imports ``tensorrt``, and only when called; :mod:`.backend` (preflight), :mod:`.build`,
:mod:`.verify` and the runner use the module it returns, inside functions, so importing this package (and running its pure-Python parts: backend
choice, optimisation profiles, layer <-> node mapping, inspector parsing) needs no TensorRT.

Entry point for the flow and the CLI: :func:`fp16guard.backends.tensorrt.build.build_engine`.
"""

from fp16guard.backends.tensorrt.errors import EnginePrecisionError, TensorRTUnavailable

__all__ = ["EnginePrecisionError", "TensorRTUnavailable", "build_engine"]


def build_engine(*args, **kwargs):
    """Lazy alias of :func:`fp16guard.backends.tensorrt.build.build_engine` (same arguments)."""
    from fp16guard.backends.tensorrt.build import build_engine as _build_engine

    return _build_engine(*args, **kwargs)
