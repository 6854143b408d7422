"""ONNX Runtime behind the runner contract (:mod:`fp16guard.runners.base`), on the CPU or the
CUDA provider.

Only this module (and the stats session built on it) imports onnxruntime, and only when a runner
is created or a provider question is asked, so commands that never run a model do not pay for
the import. Sessions live in runner objects, never in module globals.

Facts this module relies on (docs/GPU.md):

* TF32 is on by default in the CUDA provider (``use_tf32``): FP32 results then differ from the
  CPU's by up to ~1%. Statistics and FP32 references must be FP32, so every CUDA session made
  here passes ``use_tf32=0`` unless the caller asks otherwise.
* A CUDA session places ops without a CUDA kernel on the CPU provider; FP16 nodes there compute
  in FP32 behind casts and hide overflow. :meth:`OnnxRuntimeRunner.node_placement` reads where
  each node ran from onnxruntime's profiler.
* ``onnxruntime.get_available_providers()`` lists CUDA in an onnxruntime-gpu build even on a
  machine without a GPU or without cuDNN; :func:`cuda_usable` opens a one-node session to know.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from typing import Mapping, Sequence

import numpy as np

from fp16guard.errors import DataError, ModelError
from fp16guard.runners.base import RunnerBase

__all__ = [
    "CPU",
    "CUDA",
    "OPTIMIZATION_LEVELS",
    "OnnxRuntimeRunner",
    "choose_providers",
    "cuda_usable",
    "resolve_providers",
    "usable_providers",
    "warn_once",
]

#: ``optimization`` argument -> name of the onnxruntime GraphOptimizationLevel member.
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_CPU = CPU  # old private name, kept for importers

#: CUDA provider options of every session made here: FP32 means FP32 (no TF32 tensor-core GEMMs).
DEFAULT_CUDA_OPTIONS = {"use_tf32": "0"}


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
        warn_once(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"(it has {', '.join(available)}); falling back to {', '.join(kept)}"
        )
    return kept


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``fp16guard: warning: <message>`` on stderr the first time this process sees the
    message (a run opens many sessions; a fallback is said once, not once per session)."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    print(f"fp16guard: warning: {message}", file=sys.stderr)


def usable_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The requested providers this onnxruntime build has, in order, ending with the CPU provider
    (no message; :func:`resolve_providers` is the same with a warning for the missing ones)."""
    kept = [p for p in (requested or [CPU]) if p in available]
    return kept if CPU in kept else kept + [CPU]


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True when this onnxruntime has the CUDA provider *and* it really loads on this machine.

    Opens one session of a one-node model on the CUDA provider (about a second on a GPU; never on
    a CPU-only onnxruntime, which does not list CUDA). Cached for the process.
    """
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return False
    if CUDA not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=[CUDA, CPU])
    except Exception:
        return False
    return CUDA in session.get_providers()


def choose_providers(requested: Sequence[str] | None) -> list[str]:
    """The providers a run uses: ``requested`` as given (CPU appended), or for None, empty or
    ``["auto"]`` the CUDA provider when :func:`cuda_usable`, else the CPU provider alone.

    Returns:
        Concrete provider names, ending with ``CPUExecutionProvider``; what a run records.
    """
    wanted = [p for p in (requested or []) if p != "auto"]
    if not wanted:
        return [CUDA, CPU] if cuda_usable() else [CPU]
    return wanted if CPU in wanted else wanted + [CPU]


class OnnxRuntimeRunner(RunnerBase):
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
        cuda_options: CUDA provider options (strings); default ``{"use_tf32": "0"}``: FP32 nodes
            really compute in FP32. Given options are merged over the default.
        record_placement: run onnxruntime's profiler until :meth:`node_placement` is read, to
            learn which provider ran each node (side effect: a JSON file in a temporary folder,
            removed on close). Costs a little time on the runs before it is read.
        disable_cpu_fallback: make session creation fail (ModelError) when any node would be
            placed on the CPU provider while another provider is requested. The CPU provider
            is then left out of the session's list (onnxruntime refuses the option when the CPU
            provider is listed explicitly: "Conflicting session configuration").
        cpu_arena: keep onnxruntime's CPU memory arena (default True). The statistics pass turns
            it off: its many small scalar buffers between large activations fragment the arena,
            which then grows well past the live set (measured on VGG-19, 2 samples: peak
            1168-1288 MiB with the arena, 1030 MiB without).
        spinning: let idle intra-op threads spin while waiting for work (default True,
            onnxruntime's default). Sessions running at once turn it off: spinning threads take
            the cores the other sessions need (results do not change).

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
        cuda_options: Mapping[str, str] | None = None,
        record_placement: bool = False,
        disable_cpu_fallback: bool = False,
        cpu_arena: bool = True,
        spinning: bool = True,
    ):
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization {optimization!r}; expected one of {sorted(OPTIMIZATION_LEVELS)}")
        self._model = model
        self._requested = providers
        self._optimization = optimization
        self._external_data_dir = external_data_dir
        self._threads = intra_op_threads
        self._execution_order = execution_order
        self._cuda_options = {**DEFAULT_CUDA_OPTIONS, **{k: str(v) for k, v in (cuda_options or {}).items()}}
        self._record_placement = record_placement
        self._disable_cpu_fallback = disable_cpu_fallback
        self._cpu_arena = cpu_arena
        self._spinning = spinning
        self._profile_dir: str | None = None
        self._placement: dict[str, str] | None = None
        self._session = None

    # -- lifecycle -------------------------------------------------------------------------
    def activate(self) -> None:
        """Create the session (idempotent). Raises ModelError when onnxruntime rejects the model."""
        if self._session is not None:
            return
        import onnxruntime as ort

        # The default logger (process-wide) prints provider-internal errors that onnxruntime
        # recovers from, e.g. cuDNN frontend "No execution plans support the graph" while it
        # picks a convolution algorithm; errors that matter are raised and reach the user.
        ort.set_default_logger_severity(4)
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[self._optimization])
        options.intra_op_num_threads = self._threads
        options.enable_cpu_mem_arena = self._cpu_arena
        if self._execution_order:
            options.execution_order = getattr(ort.ExecutionOrder, self._execution_order.upper())
        # Fatal only: onnxruntime logs warnings (unused initializers) and errors it also raises;
        # both would break the CLI's one-line contract on stderr. Raised errors reach the user.
        options.log_severity_level = 4
        if self._external_data_dir is not None:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self._external_data_dir)
            )
        if self._disable_cpu_fallback:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if not self._spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self._record_placement:
            self._profile_dir = tempfile.mkdtemp(prefix="fp16guard-ort-profile-")
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(self._profile_dir, "ort")
        providers = resolve_providers(self._requested, ort.get_available_providers())
        if self._disable_cpu_fallback and len(providers) > 1:
            providers = [p for p in providers if p != CPU]
        with_options = [(p, dict(self._cuda_options)) if p == CUDA else p for p in providers]
        source = self._model
        what = str(source) if isinstance(source, (str, os.PathLike)) else "the model"
        if not isinstance(source, (str, os.PathLike, bytes)):
            source = source.SerializeToString()
        try:
            self._session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options, providers=with_options)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._drop_profile_dir()
            raise ModelError(f"onnxruntime cannot load {what}: {first}") from None
        finally:
            del source  # drop the serialized copy as soon as onnxruntime has parsed it

    def close(self) -> None:
        """Release the session and its memory (idempotent); removes the profiler's folder."""
        self._session = None
        self._drop_profile_dir()

    def _drop_profile_dir(self) -> None:
        if self._profile_dir:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None

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

    def node_placement(self) -> dict[str, dict[str, str]]:
        """Which provider ran each node, from onnxruntime's profiler:
        ``{node name: {"provider": ..., "op_type": ...}}``.

        Needs ``record_placement=True`` and at least one :meth:`infer` before; the first call
        stops the profiler (later runs are not slowed) and caches the answer. Node names are the
        optimised graph's: fused nodes carry onnxruntime's names, other nodes keep the model's.

        Raises:
            RuntimeError: placement was not recorded, or nothing ran yet.
        """
        if self._placement is not None:
            return {k: dict(v) for k, v in self._placement.items()}
        if not self._record_placement:
            raise RuntimeError("node placement was not recorded; create the runner with record_placement=True")
        path = self.session.end_profiling()
        try:
            with open(path, encoding="utf-8") as fh:
                events = json.load(fh)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"onnxruntime's profile {path} cannot be read: {exc}") from None
        placement: dict[str, dict[str, str]] = {}
        for event in events if isinstance(events, list) else events.get("traceEvents", []):
            args = event.get("args") or {}
            name = str(event.get("name", ""))
            if event.get("cat") == "Node" and "provider" in args and name.endswith("_kernel_time"):
                placement[name[: -len("_kernel_time")]] = {"provider": str(args["provider"]), "op_type": str(args.get("op_name", ""))}
        if not placement:
            raise RuntimeError("onnxruntime's profile lists no node; run infer() once before node_placement()")
        self._placement = placement
        self._drop_profile_dir()
        return {k: dict(v) for k, v in placement.items()}

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
