"""Run a built engine on holdout data, behind the same runner interface as onnxruntime.

:class:`TensorRTRunner` is a context manager with ``infer(feeds) -> dict[str, ndarray]`` and
``output_names``, like :class:`fp16guard.runners.onnxrt.OnnxRuntimeRunner`, so the verification
code compares it with the FP32 reference the same way. It wraps Polygraphy's ``TrtRunner``
(device buffers, dynamic input shapes, host copies). Engines live in runner objects only.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import numpy as np

from fp16guard.errors import DataError, ModelError
from fp16guard.runners.base import RunnerBase
from fp16guard.runners.tensorrt_env import require_tensorrt

__all__ = ["TensorRTRunner", "infer_shard", "run_holdout"]


class TensorRTRunner(RunnerBase):
    """One deserialized engine and execution context, opened and closed as a context manager.

    Args:
        engine_path: a ``model.engine`` written by :func:`.build.build_engine`.

    Raises (on activate / enter):
        TensorRTUnavailable: no tensorrt module.
        ModelError: the file is missing or not an engine this TensorRT can load.
    """

    def __init__(self, engine_path: str | os.PathLike):
        self.engine_path = str(engine_path)
        self._runner = None
        self.output_names: list[str] = []
        self.input_names: list[str] = []

    def activate(self) -> None:
        """Deserialize the engine and create its execution context (idempotent)."""
        if self._runner is not None:
            return
        trt = require_tensorrt()
        from polygraphy.backend.trt import EngineFromPath, TrtRunner
        from polygraphy.exception import PolygraphyException

        if not os.path.isfile(self.engine_path):
            raise ModelError(f"engine {self.engine_path} does not exist; expected a model.engine built by fp16guard")
        try:
            runner = TrtRunner(EngineFromPath(self.engine_path))
            runner.activate()
        except PolygraphyException as exc:
            raise ModelError(f"engine {self.engine_path} cannot be loaded by TensorRT {trt.__version__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
        self._runner = runner
        engine = runner.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def close(self) -> None:
        """Release the engine and its device buffers (idempotent)."""
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def infer(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one batch; returns the engine outputs as host arrays (copies, owned by the caller).

        Args:
            feeds: input name -> array; names the engine does not have are ignored.
            output_names: outputs to return (default: all). TensorRT computes all of them anyway.

        Raises:
            DataError: a feed does not fit the engine (shape outside its optimisation profile,
                wrong dtype, missing input).
        """
        if self._runner is None:
            raise RuntimeError("TensorRTRunner.infer called outside its 'with' block")
        from polygraphy.exception import PolygraphyException

        feed = {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in self.input_names}
        try:
            outputs = self._runner.infer(feed, copy_outputs_to_host=True)
        except PolygraphyException as exc:
            shapes = {k: list(v.shape) for k, v in feed.items()}
            raise DataError(
                f"the engine rejects feeds {shapes}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}; "
                "expected shapes inside the optimisation profile built from the calibration and holdout data"
            ) from None
        # Polygraphy reuses its host buffers between calls: copy before the next infer.
        wanted = self.output_names if output_names is None else [n for n in output_names if n in self.output_names]
        return {name: np.array(outputs[name], copy=True) for name in wanted if name in outputs}


def infer_shard(runner, feeds: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Run a prepared shard in slices of ``size`` samples and join the outputs along axis 0.

    Works with any runner with ``infer(feeds)`` (TensorRT or onnxruntime).
    """
    from fp16guard.io.shards import iter_slices

    parts: dict[str, list[np.ndarray]] = {}
    for chunk in iter_slices(feeds, size):  # prepared Feeds keep each input's batch axis
        for name, value in runner.infer(chunk).items():
            parts.setdefault(name, []).append(value)
    return {name: (vals[0] if len(vals) == 1 else np.concatenate(vals, axis=0)) for name, vals in parts.items()}


def run_holdout(engine_path: str | os.PathLike, refs: Sequence, specs, batch_size: int | None = None) -> Iterator[tuple[object, dict[str, np.ndarray]]]:
    """Yield ``(shard ref, outputs)`` for each holdout shard, one shard in memory at a time.

    Args:
        engine_path: the engine to run.
        refs: :class:`fp16guard.io.shards.ShardRef` objects.
        specs: the model's inputs (feeds are checked and cast by :func:`fp16guard.io.shards.prepare_feeds`).
        batch_size: ``--batch-size``; the model's static batch wins.
    """
    from fp16guard.io.shards import batch_count, load_shard, prepare_feeds, slice_size

    with TensorRTRunner(engine_path) as runner:
        for ref in refs:
            feeds = prepare_feeds(ref, load_shard(ref), specs)
            size = slice_size(specs, batch_count(feeds), batch_size)
            yield ref, infer_shard(runner, feeds, size)
