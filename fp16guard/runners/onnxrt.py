"""ONNX Runtime behind the runner interface: a context manager with ``infer(feeds)``.

Only this module (and the stats session built on it) imports onnxruntime, and only when a runner
is created, so commands that never run a model do not pay for the import. Sessions live in runner
objects, never in module globals.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

import numpy as np

from fp16guard.errors import DataError, ModelError

#: ``optimization`` argument -> name of the onnxruntime GraphOptimizationLevel member.
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

_CPU = "CPUExecutionProvider"


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Keep the requested providers this onnxruntime build has; always end with the CPU provider.

    Prints one warning line on stderr when a requested provider is missing (side effect).

    Args:
        requested: provider names in priority order; None or empty means CPU only.
        available: what ``onnxruntime.get_available_providers()`` reports.
    """
    kept = usable_providers(requested, available)
    missing = [p for p in (requested or []) if p not in available]
    if missing:
        print(
            f"fp16guard: warning: execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(it has {', '.join(available)}); falling back to {', '.join(kept)}",
            file=sys.stderr,
        )
    return kept


def usable_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The requested providers this onnxruntime build has, in order, ending with the CPU provider
    (no message; :func:`resolve_providers` is the same with a warning for the missing ones)."""
    kept = [p for p in (requested or [_CPU]) if p in available]
    return kept if _CPU in kept else kept + [_CPU]


class OnnxRuntimeRunner:
    """One onnxruntime inference session, opened and closed as a context manager.

    Args:
        model: a path to an ``.onnx`` file (loaded by onnxruntime itself, the cheapest way: no
            Python copy of the weights) or a ``ModelProto`` (serialized once to bytes).
        providers: execution providers in priority order; default CPU only. Missing ones fall
            back to CPU with one warning line on stderr.
        optimization: graph optimisation level: "disable", "basic", "extended" or "all" (default).
        external_data_dir: folder against which the external-data locations of a ``ModelProto``
            are resolved (for a path, onnxruntime uses the file's folder). Default: none.
        intra_op_threads: threads per operator; 0 (default) lets onnxruntime choose.
        execution_order: onnxruntime's node order: None (default: onnxruntime's own),
            "priority_based" or "memory_efficient" (names of ``onnxruntime.ExecutionOrder``).

    Example:
        >>> with OnnxRuntimeRunner("model.onnx") as runner:
        ...     outputs = runner.infer({"x": batch})
    """

    def __init__(
        self,
        model,
        providers: list[str] | None = None,
        optimization: str = "all",
        external_data_dir: str | os.PathLike | None = None,
        intra_op_threads: int = 0,
        execution_order: str | None = None,
    ):
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization {optimization!r}; expected one of {sorted(OPTIMIZATION_LEVELS)}")
        self._model = model
        self._requested = providers
        self._optimization = optimization
        self._external_data_dir = external_data_dir
        self._threads = intra_op_threads
        self._execution_order = execution_order
        self._session = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "OnnxRuntimeRunner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def activate(self) -> None:
        """Create the session (idempotent). Raises ModelError when onnxruntime rejects the model."""
        if self._session is not None:
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[self._optimization])
        options.intra_op_num_threads = self._threads
        if self._execution_order:
            options.execution_order = getattr(ort.ExecutionOrder, self._execution_order.upper())
        # Fatal only: onnxruntime logs warnings (unused initializers) and errors it also raises;
        # both would break the CLI's one-line contract on stderr. Raised errors reach the user.
        options.log_severity_level = 4
        if self._external_data_dir is not None:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self._external_data_dir)
            )
        providers = resolve_providers(self._requested, ort.get_available_providers())
        source = self._model
        what = str(source) if isinstance(source, (str, os.PathLike)) else "the model"
        if not isinstance(source, (str, os.PathLike, bytes)):
            source = source.SerializeToString()
        try:
            self._session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load {what}: {first}") from None
        finally:
            del source  # drop the serialized copy as soon as onnxruntime has parsed it

    def close(self) -> None:
        """Release the session and its memory (idempotent)."""
        self._session = None

    # -- queries -----------------------------------------------------------------------------
    @property
    def session(self):
        if self._session is None:
            raise RuntimeError("runner is not active; use it as a context manager")
        return self._session

    @property
    def output_names(self) -> list[str]:
        """Graph output names, in graph order."""
        return [o.name for o in self.session.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        """Graph input names (initializers excluded), in graph order."""
        return [i.name for i in self.session.get_inputs()]

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime actually uses, in priority order."""
        return list(self.session.get_providers())

    def infer(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one inference.

        Args:
            feeds: input name -> array (already of the model's dtypes and shapes).
            output_names: outputs to fetch; default all.

        Returns:
            Output name -> array, for the requested outputs.

        Raises:
            DataError: onnxruntime rejects the feeds (wrong names, shapes or dtypes) or fails
                while running on them (e.g. a Reshape that only fits the shapes the model was
                exported with); the message gives the feed shapes and onnxruntime's reason.
        """
        names = list(output_names) if output_names is not None else self.output_names
        try:
            values = self.session.run(names, dict(feeds))
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            shapes = {k: list(np.shape(v)) for k, v in feeds.items()}
            raise DataError(f"onnxruntime cannot run the model on inputs of shapes {shapes}: {first}") from None
        return dict(zip(names, values))
