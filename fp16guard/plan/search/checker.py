"""The injected checker of the search: build a candidate for an FP32 set, run it against FP32 on
calibration data, and say how it fares.

Every check builds ``to_mixed_precision(model, fp32)``, runs it through FP16 storage emulation on
the CPU provider (:func:`fp16guard.verify.compare.emulated_candidate`; emulation agreed with real
FP16 kernels on every case measured, docs/FP16.md) and compares it with FP32 under the run's
:class:`~fp16guard.verify.metrics.Gate`. The FP32 reference runs once: its outputs are kept for
the checks that follow (the same shards in the same order every time). The samples run in at least
:data:`SLICES` slices where they allow, so each check also gives a per-slice score and so a
statistical margin (:mod:`fp16guard.plan.search.margin`). Results are memoised per FP32 set.

Checks may run at once from several threads (:mod:`fp16guard.plan.search.speculate` runs them
ahead of need on an executor): every check builds its own candidate and session; the shared
FP32 reference is filled once under a lock and replayed through a cursor per check; the memo and
the counter are locked. Each session uses ``threads`` intra-op threads whatever the number of
checks in flight: onnxruntime splits element-wise kernels into per-thread blocks, and the split
changes the last bits of transcendental ops (basic-pitch's Log and outputs, measured 2026-12-06),
so a thread count that followed the parallelism could make the scores, and so the plan, depend
on it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import onnx

from fp16guard.io.shards import ShardRef, header_samples, peek_shard
from fp16guard.plan.search.margin import Spread, inflation
from fp16guard.verify.metrics import Gate

__all__ = ["Check", "CalibrationChecker", "CheckAbandoned", "SLICES"]

#: Slices a check's calibration samples are split into at least (when there are that many).
SLICES = 8


@dataclass(frozen=True)
class Check:
    """The outcome of one candidate on calibration data.

    Attributes:
        fp32: the FP32 set checked.
        passed: passed the user's gate.
        score: worst failure ratio under the user's gate (``<= 1`` passes; ``inf``: NaN/inf).
        spread: the statistical margin of this candidate.
        worst_rel_error: worst relative error over float outputs (None: non-finite).
        nonfinite: non-finite candidate output values.
        reason: the gate's sentence (``passed`` when it passed).
        seconds: wall time of the check.
        errors: relative error per output (None: non-finite) — what attribution starts from.
        suggested_gates: task gates that would pass where the numeric gate failed
            (:func:`fp16guard.verify.metrics.suggest_gates`).
    """

    fp32: frozenset[str]
    passed: bool
    score: float
    spread: Spread
    worst_rel_error: float | None
    nonfinite: int
    reason: str
    seconds: float
    errors: dict[str, float | None] = field(default_factory=dict)
    suggested_gates: tuple[dict, ...] = ()

    @property
    def bound(self) -> float:
        """``score * inflation``: the failure ratio expected on as many unseen samples."""
        return self.score * self.spread.inflation

    @property
    def accepted(self) -> bool:
        """Passes the gate with the margin unseen data needs (``passed`` and ``bound <= 1``)."""
        return self.passed and self.bound <= 1.0


class CheckAbandoned(Exception):
    """A check stopped before its end because its result is no longer wanted (a speculative
    check off the search's path); nothing is memoised."""


class _CachedReference:
    """The FP32 reference outputs, computed on the first pass and replayed after it.

    Every check reads the reference through its own :meth:`replay` cursor (calls come in the same
    order in every check: the same shards, the same slices), so checks running at once never share
    a position. The first pass fills the cache under a lock: two checks reaching an output not yet
    computed run the FP32 session once.
    """

    def __init__(self, runner) -> None:
        self._runner = runner
        self._outputs: list[dict] = []
        self._lock = threading.Lock()
        self.output_names = runner.output_names

    def replay(self, stop: threading.Event | None = None) -> "_Replay":
        """A cursor at the first output; ``stop`` set makes its next call raise CheckAbandoned."""
        return _Replay(self, stop)

    def _get(self, at: int, feeds, output_names):
        with self._lock:
            if at < len(self._outputs):
                return self._outputs[at]
            if at != len(self._outputs):  # a cursor cannot skip an output: calls come in order
                raise RuntimeError(f"reference output {at} asked for before output {len(self._outputs)}")
            out = self._runner.infer(feeds, output_names)
            self._outputs.append(out)
            return out


class _Replay:
    """One check's position in a :class:`_CachedReference` (the runner contract of
    :func:`fp16guard.verify.compare.compare_runners`: ``output_names`` and ``infer``)."""

    def __init__(self, cache: _CachedReference, stop: threading.Event | None) -> None:
        self._cache, self._stop, self._at = cache, stop, 0
        self.output_names = cache.output_names

    def infer(self, feeds, output_names=None):
        # Called once per slice: where an abandoned speculative check gives its thread back.
        if self._stop is not None and self._stop.is_set():
            raise CheckAbandoned("check abandoned")
        out = self._cache._get(self._at, feeds, output_names)
        self._at += 1
        return out


def _sliceable(model: onnx.ModelProto, shards: Sequence[ShardRef]) -> bool:
    """False when slicing a shard finer than it comes could split it wrongly: an input fed whole
    with every slice (no batch axis the model's declared shapes show) has a dimension as large as
    the batch — an RNN state ``[2, N, 128]`` of a model without named dimensions is batched on
    axis 1, which nothing declares."""
    from fp16guard.io.model import input_specs
    from fp16guard.io.shards import batch_axes

    specs = input_specs(model)
    axes = batch_axes(specs)
    for ref in shards:
        layout = peek_shard(ref)
        sizes = {layout[n][1][a] for n, a in axes.items() if a is not None and n in layout and len(layout[n][1]) > a}
        if len(sizes) != 1:
            continue
        batch = sizes.pop()
        for name, axis in axes.items():
            if axis is None and name in layout and batch > 1 and batch in layout[name][1]:
                return False
    return True


class CalibrationChecker:
    """Checks FP32 sets on calibration shards (see the module docstring).

    Args:
        model: the FP32 model, weights loaded (not modified).
        shards: the calibration shards to check on.
        gate: the user's gate.
        batch_size: largest samples per inference call (None: as many as make :data:`SLICES`;
            shards whose batch cannot be told apart from an input fed whole run unsliced).
        fixed_margin: the user's ``repair_margin`` (None: statistical inflation).
        threads: onnxruntime intra-op threads of every session (0, the default: onnxruntime's
            choice, one per physical core). Keep it the same whatever the number of checks
            running at once: results depend on it in the last bits (module docstring).
        spinning: let idle onnxruntime threads spin (default True); off when checks run at once,
            so that waiting threads leave the cores to the other checks (results unchanged).

    Use as a context manager (the FP32 reference session stays open between checks).
    :meth:`check` may be called from several threads at once.
    """

    def __init__(self, model: onnx.ModelProto, shards: Sequence[ShardRef], gate: Gate, batch_size: int | None = None, fixed_margin: float | None = None, threads: int = 0, spinning: bool = True) -> None:
        self.model = model
        self.shards = list(shards)
        self.gate = gate
        self.fixed_margin = fixed_margin
        self.samples = sum(header_samples(ref) for ref in self.shards)
        per = max(1, math.ceil(self.samples / SLICES))
        if not _sliceable(model, self.shards):
            per = batch_size  # keep the shard's batch whole, as verification would run it
        self.batch_size = min(per, batch_size) if batch_size and per else per
        self.threads = threads
        self.spinning = spinning
        self.checks = 0
        self._memo: dict[frozenset[str], Check] = {}
        self._lock = threading.Lock()
        self._ref = None
        self._ref_runner = None

    def __enter__(self) -> "CalibrationChecker":
        from fp16guard.runners.onnxrt import OnnxRuntimeRunner

        self._ref_runner = OnnxRuntimeRunner(self.model, providers=None, intra_op_threads=self.threads, spinning=self.spinning)
        self._ref_runner.__enter__()
        self._ref = _CachedReference(self._ref_runner)
        return self

    def __exit__(self, *exc) -> None:
        if self._ref_runner is not None:
            self._ref_runner.__exit__(*exc)
        self._ref = self._ref_runner = None

    def known(self, fp32: frozenset[str] | set[str]) -> bool:
        """True when ``fp32`` was checked already (checking it again costs nothing)."""
        return frozenset(fp32) in self._memo

    def peek(self, fp32: frozenset[str] | set[str]) -> Check | None:
        """The memoised result for ``fp32``, or None when it was not checked (nothing runs)."""
        return self._memo.get(frozenset(fp32))

    def check(self, fp32: frozenset[str] | set[str], stop: threading.Event | None = None) -> Check:
        """Build and check the candidate that keeps ``fp32`` in FP32 (memoised).

        Args:
            fp32: the nodes kept in FP32.
            stop: set by another thread, the check ends at its next inference slice with
                :class:`CheckAbandoned` and memoises nothing (a speculative check no longer
                wanted).
        """
        from fp16guard.graph.convert import to_mixed_precision
        from fp16guard.runners.onnxrt import OnnxRuntimeRunner
        from fp16guard.verify.compare import compare_runners, emulated_candidate

        key = frozenset(fp32)
        known = self._memo.get(key)
        if known is not None:
            return known
        reference = self._ref
        if reference is None:
            raise RuntimeError("CalibrationChecker.check needs an open checker (use it as a context manager)")
        t0 = time.monotonic()
        candidate = to_mixed_precision(self.model, set(key), check=False)
        run_model, _ = emulated_candidate(candidate)
        slices: list[dict] = []
        with OnnxRuntimeRunner(run_model, providers=None, intra_op_threads=self.threads, spinning=self.spinning) as cand_run:
            report = compare_runners(self.model, reference.replay(stop), candidate, cand_run, self.shards, self.gate, self.batch_size, per_slice=slices)
        outputs = report.get("outputs", {})
        score = self.gate.score(outputs)
        spread = inflation([self.gate.score(s) for s in slices], self.fixed_margin)
        errors: dict[str, float | None] = {}
        nonfinite = 0
        for name, fig in outputs.items():
            nonfinite += int(fig.get("nonfinite") or 0)
            if fig.get("kind") == "float":
                errors[name] = None if fig.get("nonfinite") or fig.get("max_rel_error") is None else float(fig["max_rel_error"])
        rels = list(errors.values())
        worst = None if nonfinite or any(r is None for r in rels) else (max(rels) if rels else 0.0)
        result = Check(
            fp32=key, passed=bool(report["passed"]), score=score, spread=spread, worst_rel_error=worst, nonfinite=nonfinite,
            reason=str(report.get("reason") or "passed"), seconds=round(time.monotonic() - t0, 3), errors=errors,
            suggested_gates=tuple(report.get("suggested_gates") or ()),
        )
        with self._lock:
            if key in self._memo:  # checked twice at once: the first result stands (they are equal)
                return self._memo[key]
            self._memo[key] = result
            self.checks += 1
        return result
