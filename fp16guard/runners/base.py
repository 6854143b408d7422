"""The runner contract: one loaded model (or engine) that runs batches, as a context manager.

Every runner (:class:`fp16guard.runners.onnxrt.OnnxRuntimeRunner` on the CPU or CUDA provider,
:class:`fp16guard.runners.tensorrt.TensorRTRunner`) implements :class:`Runner`, so verification
(:func:`fp16guard.verify.compare.compare_runners`) and profiling
(:mod:`fp16guard.backends.profile`) treat them alike. Polygraphy's runners have the same shape
(activate / infer / deactivate); here ``close`` is the name.

Contract:

* ``activate()`` loads the model; idempotent. Errors the user can fix are
  :class:`fp16guard.errors.UserError` subclasses (``ModelError``, ``TensorRTUnavailable``).
* ``infer(feeds, output_names=None)`` returns host arrays owned by the caller; names that the
  model lacks are the caller's error (``DataError`` for feeds that do not fit).
* ``close()`` releases the session/engine; idempotent. ``with runner:`` = activate ... close.
* ``input_names`` / ``output_names`` are valid while active.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Runner", "RunnerBase"]


@runtime_checkable
class Runner(Protocol):
    """What verification and profiling need of a runtime (structural: no base class required)."""

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...

    def activate(self) -> None: ...

    def infer(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc) -> None: ...


class RunnerBase:
    """Context-manager plumbing shared by the runners: ``with`` calls activate / close."""

    def activate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
