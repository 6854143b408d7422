"""Verification: run the FP32 model and the built candidate on every holdout sample and compare.

Figures per output (accumulated shard by shard and slice by slice, so memory does not grow with
the number of shards or samples). Each holdout shard is accumulated on its own (a
:class:`ShardPart`, fresh accumulators) and the parts are merged in shard order, so the sums
behind ``cosine`` are added in the same order whether one process compared every shard or the
shards were split over tasks, processes or GPUs and merged after (:func:`merge_comparisons`):
the verdict and every figure are bit-for-bit the same (issue 18).

- float outputs: ``max_abs_error``, ``max_rel_error`` = max_abs_error / max |fp32| of that
  output over all samples, ``cosine`` similarity of the flattened outputs (all samples),
  ``nonfinite`` values in the candidate, ``ref_max_abs``. A candidate holding any NaN/inf has no
  bounded error: its ``max_abs_error``, ``max_rel_error`` and ``cosine`` are None (JSON null),
  never a finite number (:class:`fp16guard.records.OutputFigures`).
- integer and boolean outputs: ``mismatch_fraction`` (elements that differ / elements).

The gate fails when any candidate output is non-finite, ``max_rel_error`` exceeds
``settings.max_rel_error``, ``cosine`` falls below ``settings.min_cosine``, or
``mismatch_fraction`` exceeds ``settings.max_mismatch_fraction``. Every float output also
carries ``checks`` (top-1/top-k agreement over the last axis, thresholded-map agreement; see
:mod:`fp16guard.verify.task_checks`), and an output named in ``settings.output_gates`` is judged
by the metric registered for the gate chosen there instead (:mod:`fp16guard.verify.metrics`;
``gate`` in its figures says which judged it).

FP16 on the CPU provider (docs/FACTS.md #1-2): onnxruntime's CPU provider computes most FP16 nodes in
FP32 and so hides overflow. When the candidate holds FP16 tensors and runs on the CPU provider,
it is verified through FP16 storage emulation (``fp16guard.graph.emulate.emulate_fp16_storage``): an
FP32 graph whose formerly-FP16 tensors are rounded through FP16, which reproduces overflow. The
report's ``execution`` field says which was done.
"""

from __future__ import annotations

import copy
import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto

from fp16guard.io.shards import ShardRef, batch_count, iter_slices, load_shard, prepare_feeds, shard_context, slice_size
from fp16guard.errors import DataError, NonFiniteError, VerificationFailed
from fp16guard.io.model import input_specs, load_model
from fp16guard.records.verification import OutputFigures, VerificationReport
from fp16guard.verify.metrics import Gate, suggest_gates
from fp16guard.verify.metrics.base import ERROR_SEVERITY
from fp16guard.verify.task_checks import TaskChecks, check_gate_outputs
from fp16guard.settings import VerifySettings

__all__ = [
    "Comparison",
    "ShardPart",
    "collect_comparison",
    "compare_runners",
    "emulated_candidate",
    "gate",
    "has_fp16",
    "merge_comparisons",
    "splittable",
    "verify",
    "verify_mixed",
]

_CPU = "CPUExecutionProvider"


# --------------------------------------------------------------------------------------------
# per-output accumulators


@dataclass
class _FloatStats:
    """Running figures of one float output; O(1) memory."""

    dtype: str
    elements: int = 0
    nonfinite: int = 0
    max_abs_error: float = 0.0
    ref_max_abs: float = 0.0
    cand_max_abs: float = 0.0
    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    checks: TaskChecks = field(default_factory=TaskChecks)
    own: object | None = None  # the accumulator of a metric that needs its own (a user's gate)

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        self.checks.update(ref, cand)  # top-1/top-k and thresholded agreement, before flattening
        if self.own is not None:
            self.own.update(ref, cand)
        r = np.asarray(ref, dtype=np.float64).ravel()
        c = np.asarray(cand, dtype=np.float64).ravel()
        finite = np.isfinite(c)
        self.elements += r.size
        bad = int(r.size - np.count_nonzero(finite))
        self.nonfinite += bad
        if r.size:
            self.ref_max_abs = max(self.ref_max_abs, float(np.abs(r).max()))
        if bad:
            r, c = r[finite], c[finite]
        if r.size:
            self.max_abs_error = max(self.max_abs_error, float(np.abs(c - r).max()))
            self.cand_max_abs = max(self.cand_max_abs, float(np.abs(c).max()))
            self.dot += float(np.dot(r, c))
            self.ref_sq += float(np.dot(r, r))
            self.cand_sq += float(np.dot(c, c))

    def merge(self, other: "_FloatStats") -> None:
        """Add ``other`` (the figures of later samples of the same output) to these, in place.

        Counts and maxima merge exactly; the three sums are added once per merge, so merging
        per-shard accumulators in shard order gives the same floats whatever the split.
        """
        self.checks.merge(other.checks)
        if self.own is not None and other.own is not None and other.own is not self.own:
            self.own.merge(other.own)  # a shared accumulator (no merge) saw every slice already
        self.elements += other.elements
        self.nonfinite += other.nonfinite
        self.ref_max_abs = max(self.ref_max_abs, other.ref_max_abs)
        self.max_abs_error = max(self.max_abs_error, other.max_abs_error)
        self.cand_max_abs = max(self.cand_max_abs, other.cand_max_abs)
        self.dot += other.dot
        self.ref_sq += other.ref_sq
        self.cand_sq += other.cand_sq

    def figures(self) -> dict:
        # A candidate holding NaN/inf has no bounded error: OutputFigures sets max_abs_error,
        # max_rel_error and cosine to None for it (a figure over the finite values alone would
        # read 0.0, perfect, for an all-NaN output).
        rel = self.max_abs_error / self.ref_max_abs if self.ref_max_abs > 0 else (0.0 if self.max_abs_error == 0 else math.inf)
        if self.ref_sq == 0 and self.cand_sq == 0:
            cosine = 1.0
        elif self.ref_sq == 0 or self.cand_sq == 0:
            cosine = 0.0
        else:
            cosine = self.dot / math.sqrt(self.ref_sq * self.cand_sq)
            cosine = max(-1.0, min(1.0, cosine))
        return OutputFigures(
            kind="float",
            dtype=self.dtype,
            elements=self.elements,
            nonfinite=self.nonfinite,
            max_abs_error=self.max_abs_error,
            max_rel_error=rel,
            cosine=cosine,
            ref_max_abs=self.ref_max_abs,
            candidate_max_abs=self.cand_max_abs,
            checks={**self.checks.figures(), **(self.own.figures() if self.own is not None else {})},
        ).to_dict()


@dataclass
class _ExactStats:
    """Running mismatch count of one integer or boolean output."""

    dtype: str
    elements: int = 0
    mismatches: int = 0

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        self.elements += ref.size
        self.mismatches += int(np.count_nonzero(np.asarray(ref).ravel() != np.asarray(cand).ravel()))

    def merge(self, other: "_ExactStats") -> None:
        """Add ``other``'s counts to these, in place (exact)."""
        self.elements += other.elements
        self.mismatches += other.mismatches

    def figures(self) -> dict:
        return {
            "kind": "exact",
            "dtype": self.dtype,
            "elements": self.elements,
            "mismatches": self.mismatches,
            "mismatch_fraction": self.mismatches / self.elements if self.elements else 0.0,
        }


# --------------------------------------------------------------------------------------------
# gate


def _judge(name: str, fig: dict, gate: Gate) -> list[tuple[float, str]]:
    """Failures of one output as (severity, one-line message); severity orders the reason."""
    if "error" in fig:
        return [(ERROR_SEVERITY, f"output '{name}': {fig['error']}")]
    return [(f.severity, f.message) for f in gate.metric(name).judge(name, fig)]


def gate(report: dict) -> dict:
    """Raise :class:`VerificationFailed` when ``report`` (from :func:`verify`) did not pass.

    Returns:
        The report, unchanged, when it passed.
    """
    if not report.get("passed"):
        raise VerificationFailed(report.get("reason") or "verification failed", report)
    return report


# --------------------------------------------------------------------------------------------
# helpers


def has_fp16(model: onnx.ModelProto) -> bool:
    """True when the model's main graph declares or produces any FLOAT16 tensor."""
    g = model.graph
    for value in list(g.input) + list(g.output) + list(g.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            return True
    if any(t.data_type == TensorProto.FLOAT16 for t in g.initializer):
        return True
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                return True
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                return True
    return False


def _as_model(model: onnx.ModelProto | str | os.PathLike) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _graph_and_source(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, onnx.ModelProto | str]:
    """(model for input specs, what onnxruntime should load). For a path: its graph with the
    weights left in the file (checked like :func:`load_model` would, minus the weights), and the
    path itself for onnxruntime."""
    if isinstance(model, onnx.ModelProto):
        return model, model
    from fp16guard.io.model import normalize_model
    from fp16guard.io.lazy_weights import load_graph_only

    return normalize_model(load_graph_only(model)), str(model)


def _first_provider(providers: list[str] | None) -> str:
    """The provider onnxruntime will put first: the first requested one it has, else CPU."""
    import onnxruntime as ort

    from fp16guard.runners.onnxrt import usable_providers

    return usable_providers(providers, ort.get_available_providers())[0]


def _runner(model, providers):
    # The teammate-owned runner; imported here so that importing verify stays cheap.
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model, providers=providers)


def emulated_candidate(cand_model: onnx.ModelProto) -> tuple[onnx.ModelProto, list]:
    """The FP32 graph that emulates ``cand_model``'s FP16 storage on the CPU provider.

    Returns:
        ``(model to run, Convs that onnxruntime's FP16 weight fusions merged)``.
    """
    from fp16guard.graph.emulate import emulate_fp16_storage
    from fp16guard.graph.ort_fusions import fuse_like_onnxruntime

    # Emulate the graph onnxruntime will run: it fuses a Mul, Add or BatchNormalization into
    # the FP16 Conv before it, storing the products in FP16 (graph/ort_fusions.py), which an
    # FP32 emulation of the unfused graph would never see.
    fused_model, fused = fuse_like_onnxruntime(cand_model)
    # No ONNX checker pass here: onnxruntime validates the graph as it loads it a moment
    # later, and the full check costs seconds and a copy of the weights on large models.
    return emulate_fp16_storage(fused_model, check=False), list(fused)


# --------------------------------------------------------------------------------------------
# verify


def verify(
    reference: onnx.ModelProto | str | os.PathLike,
    candidate: onnx.ModelProto | str | os.PathLike,
    holdout: Sequence[ShardRef],
    settings: "VerifySettings | Gate | None" = None,
    batch_size: int | None = None,
    providers: list[str] | None = None,
    emulate: bool | None = None,
) -> dict:
    """Compare ``candidate`` with the FP32 ``reference`` on every holdout sample.

    Args:
        reference: the FP32 model (proto or path).
        candidate: the built model (proto or path), same graph inputs and outputs.
        holdout: shards, run one at a time (memory flat in their number).
        settings: the gate: :class:`VerifySettings` (default ``VerifySettings()``) or a
            :class:`~fp16guard.verify.metrics.Gate`.
        batch_size: samples per inference call (a static batch dimension in the models wins);
            default: the whole shard.
        providers: onnxruntime execution providers for both models; default CPU.
        emulate: run the candidate through FP16 storage emulation. None (default): when the
            candidate holds FP16 and onnxruntime runs it on the CPU provider (docs/FACTS.md #1-2).

    Returns:
        The content of ``verification.json``: ``passed``, ``reason`` (one line naming the
        worst output and figure, None when passed), ``outputs`` (figures per output),
        ``samples``, ``shards``, ``tolerances``, ``execution`` (what ran the candidate),
        ``emulated``, ``providers``.

    Raises:
        DataError / NonFiniteError: a shard does not fit the models, or the FP32 reference
            itself produced NaN/inf (names shard and output).
    """
    settings = settings or VerifySettings()
    if not holdout:
        raise DataError("the holdout set is empty; expected at least one shard to verify on")
    # A reference given by path runs from its file (onnxruntime reads the weights itself); Python
    # holds only its graph, for input specs. Saves two copies of the weights at the peak.
    ref_model, ref_source = _graph_and_source(reference)
    cand_model = _as_model(candidate)
    fp16 = has_fp16(cand_model)

    first = _first_provider(providers)
    on_cpu = first == _CPU
    do_emulate = (fp16 and on_cpu) if emulate is None else bool(emulate and fp16)
    if do_emulate:
        run_model, fused = emulated_candidate(cand_model)
        execution = (
            f"onnxruntime {first}: candidate run through FP16 storage emulation (FP32 arithmetic, every FP16 tensor rounded through FP16)"
            + (f", after onnxruntime's FP16 weight fusions of {len(fused)} Conv(s)" if fused else "")
        )
    elif fp16:
        execution = f"onnxruntime {first}: candidate run as built (FP16 kernels of this provider)"
        if on_cpu:
            execution += "; WARNING: the CPU provider hides FP16 overflow (docs/FACTS.md #1)"
        run_model = cand_model
    else:
        execution = f"onnxruntime {first}: candidate has no FP16 tensors, run as built"
        run_model = cand_model

    with _runner(ref_source, providers) as ref_run, _runner(run_model, providers) as cand_run:
        report = compare_runners(ref_model, ref_run, cand_model, cand_run, holdout, settings, batch_size, progress_label="holdout shards")
        used_providers = cand_run.providers
    report.update(execution=execution, emulated=do_emulate, providers=used_providers)
    return report


# --------------------------------------------------------------------------------------------
# per-shard parts: what makes a comparison splittable


@dataclass
class ShardPart:
    """What consecutive holdout shards contribute to a comparison.

    A part made for one shard holds fresh accumulators; :meth:`merge` adds a later part to it.
    Folded left in shard order, parts give the same floats however the shards were split
    (issue 18: verification fans out over workers and still gives a single pass's verdict).

    Attributes:
        shards: names of the shards, in order.
        samples: holdout samples compared.
        stats: accumulator per output (``_FloatStats`` or ``_ExactStats``).
        errors: per output, the first reason it could not be compared (e.g. a shape mismatch),
            naming the shard; later shards do not accumulate that output.
    """

    shards: list[str] = field(default_factory=list)
    samples: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def merge(self, other: "ShardPart") -> "ShardPart":
        """Add ``other`` (the shards after these) to this part, in place; returns self.

        ``other``'s accumulators are taken over, not copied: do not use it afterwards.
        """
        self.shards.extend(other.shards)
        self.samples += other.samples
        for name, acc in other.stats.items():
            if name in self.errors:
                continue  # as in one pass: an output stops accumulating at its first error
            mine = self.stats.get(name)
            if mine is None:
                self.stats[name] = acc
            elif type(mine) is not type(acc):
                self.errors[name] = f"output kind changed from {mine.dtype} to {acc.dtype} (shard {other.shards[0] if other.shards else '?'})"
            else:
                mine.merge(acc)
        for name, message in other.errors.items():
            self.errors.setdefault(name, message)
        return self


@dataclass
class Comparison:
    """One comparison as parts, before it is judged: what a worker hands back so the flow can
    merge the comparisons of several holdout groups (:func:`merge_comparisons`).

    Attributes:
        outputs: the reference model's output names, in order.
        missing: outputs the candidate lacks, with the reason (no shard can change these).
        parts: one :class:`ShardPart` per holdout shard, in order.
    """

    outputs: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    parts: list[ShardPart] = field(default_factory=list)


_SINK: ContextVar[Comparison | None] = ContextVar("fp16guard_verify_comparison", default=None)


@contextmanager
def collect_comparison() -> Iterator[Comparison]:
    """Inside the block, :func:`compare_runners` also records its per-shard parts into the
    yielded :class:`Comparison` (a copy of each, taken before it is merged; a later comparison
    in the block replaces an earlier one's). For a task that compares some holdout shards
    through a backend's ``verify`` (which builds the runners and judges) and hands the parts
    back to be merged with other groups'. The verification itself is unchanged.
    """
    sink = Comparison()
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def splittable(settings: "VerifySettings | Gate") -> bool:
    """True when a comparison under ``settings`` may be split over processes and merged: every
    metric's own accumulator (a custom gate's) can :meth:`merge`. Built-in gates always can."""
    gate = Gate.from_settings(settings)
    for name in gate.settings.output_gates:
        acc = gate.metric(name).accumulator()
        if acc is not None and not callable(getattr(acc, "merge", None)):
            return False
    return True


def merge_comparisons(comparisons: Sequence[Comparison], settings: "VerifySettings | Gate") -> dict:
    """The report a single :func:`compare_runners` over all their shards gives, from the
    comparisons of consecutive groups of holdout shards, in shard order.

    Args:
        comparisons: one :class:`Comparison` per group, in holdout order.
        settings: the gate the groups were compared under.

    Returns:
        The report of :func:`compare_runners` (figures, verdict, reason), identical to one pass.

    Raises:
        ValueError: no comparison, or groups that disagree on the model's outputs.
    """
    if not comparisons:
        raise ValueError("no comparison to merge; expected one per holdout group")
    first = comparisons[0]
    for other in comparisons[1:]:
        if other.outputs != first.outputs or other.missing != first.missing:
            raise ValueError(f"holdout groups compared different outputs ({first.outputs} vs {other.outputs}); expected the same models in every group")
    total = ShardPart()
    for comparison in comparisons:
        for part in comparison.parts:
            total.merge(copy.deepcopy(part))  # the inputs stay as they were
    return _judged(first.outputs, first.missing, total, Gate.from_settings(settings))


def _compare_shard(ref: ShardRef, ref_run, cand_run, ref_specs, cand_specs, wanted: list[str], gate: Gate, batch_size: int | None, per_slice, shared: dict) -> ShardPart:
    """One shard's :class:`ShardPart` (fresh accumulators; ``shared`` holds the accumulators of
    custom metrics that cannot merge, fed every slice of the comparison in order)."""
    part = ShardPart(shards=[ref.name])
    raw = load_shard(ref)
    ref_feeds = prepare_feeds(ref, raw, ref_specs)
    cand_feeds = prepare_feeds(ref, raw, cand_specs)
    del raw
    n = batch_count(ref_feeds)
    size = slice_size(list(ref_specs) + list(cand_specs), n, batch_size)
    for ref_slice, cand_slice in zip(iter_slices(ref_feeds, size), iter_slices(cand_feeds, size)):
        with shard_context(ref):
            r_out = ref_run.infer(ref_slice, wanted)
            c_out = cand_run.infer(cand_slice, wanted)
        alone: dict | None = {} if per_slice is not None else None
        for name in wanted:
            _accumulate(part.stats, part.errors, ref, name, r_out[name], c_out[name], gate, shared)
            if alone is not None and name not in part.errors:
                _accumulate(alone, {}, ref, name, r_out[name], c_out[name], gate)
        if alone is not None:
            per_slice.append({name: acc.figures() for name, acc in alone.items()})
    part.samples = n
    return part


def _judged(ref_names: list[str], missing: dict[str, str], total: ShardPart, gate: Gate) -> dict:
    """The report of a comparison whose parts are merged into ``total``."""
    errors = {**missing, **total.errors}
    outputs: dict[str, dict] = {}
    failures: list[tuple[float, str]] = []
    for name in ref_names:
        fig = total.stats[name].figures() if name in total.stats else {"kind": "unknown"}
        if name in errors:
            fig["error"] = errors[name]
        fails = _judge(name, fig, gate)
        fig["gate"] = gate.gate_name(name)
        fig["passed"] = not fails
        outputs[name] = fig
        failures.extend(fails)
    failures.sort(key=lambda f: -f[0])
    reason = None
    suggestions = suggest_gates(outputs) if failures else []
    if failures:
        reason = failures[0][1] + (f" (and {len(failures) - 1} more failure(s))" if len(failures) > 1 else "")
        if suggestions and len(suggestions) == len(failures):
            # Every failure is a numeric one that a task view says agrees: the user may choose it.
            reason += "; " + "; ".join(s["sentence"] for s in suggestions)
    # Through the typed record, so verification.json has one shape and one non-finite rule.
    report = {
        "passed": not failures,
        "reason": reason,
        "outputs": outputs,
        "samples": total.samples,
        "shards": list(total.shards),
        "tolerances": gate.tolerances(),
    }
    if suggestions:
        report["suggested_gates"] = suggestions
    return VerificationReport.from_dict(report).to_dict()


def compare_runners(
    ref_model: onnx.ModelProto,
    ref_run,
    cand_model: onnx.ModelProto,
    cand_run,
    holdout: Sequence[ShardRef],
    settings: "VerifySettings | Gate",
    batch_size: int | None = None,
    per_slice: list[dict[str, dict]] | None = None,
    progress_label: str | None = None,
) -> dict:
    """The comparison loop of :func:`verify`, for any two active runners.

    A runner is anything with ``.output_names`` and ``.infer(feeds, output_names) -> dict``
    (the onnxruntime runner, or :class:`torch_fp16.TorchRunner` for real FP16 on a
    GPU). Feeds are prepared against each model's own input specs. Each shard is accumulated on
    its own and merged in order (:class:`ShardPart`); inside :func:`collect_comparison` the
    parts are also recorded.

    Args:
        settings: the gate (:class:`VerifySettings`, or a :class:`~fp16guard.verify.metrics.Gate`
            such as a tightened one).
        per_slice: when a list is given, the figures of every output of each inference slice
            alone are appended to it (``{output: figures}`` per slice, in order): how the error
            varies across samples (search margins, :mod:`fp16guard.plan.search.margin`).
        progress_label: draw a progress bar with ETA over the shards on a terminal under this
            label (:class:`fp16guard.progress.Progress`); None: no bar.

    Returns:
        The report of :func:`verify` without ``execution``, ``emulated`` and ``providers``;
        ``suggested_gates`` when the numeric gate failed an output that a task view says agrees
        (:func:`fp16guard.verify.metrics.suggest_gates`).
    """
    if not holdout:
        raise DataError("the holdout set is empty; expected at least one shard to verify on")
    gate = Gate.from_settings(settings)
    ref_specs, cand_specs = input_specs(ref_model), input_specs(cand_model)
    ref_names = list(ref_run.output_names)
    check_gate_outputs(gate, ref_names)
    cand_names = set(cand_run.output_names)
    wanted = [n for n in ref_names if n in cand_names]
    missing = {n: "missing from the candidate's outputs" for n in ref_names if n not in cand_names}
    sink = _SINK.get()
    if sink is not None:
        sink.outputs, sink.missing, sink.parts = list(ref_names), dict(missing), []
    from contextlib import nullcontext

    from fp16guard.progress import Progress

    total = ShardPart()
    shared: dict = {}
    with Progress(len(holdout), progress_label) if progress_label else nullcontext() as bar:
        for ref in holdout:
            part = _compare_shard(ref, ref_run, cand_run, ref_specs, cand_specs, wanted, gate, batch_size, per_slice, shared)
            if sink is not None:
                sink.parts.append(copy.deepcopy(part))
            total.merge(part)
            if bar is not None:
                bar.advance(ref.name)
    return _judged(ref_names, missing, total, gate)


def _accumulate(stats, errors, ref: ShardRef, name: str, r: np.ndarray, c: np.ndarray, gate: Gate | None = None, shared: dict | None = None) -> None:
    r, c = np.asarray(r), np.asarray(c)
    if r.dtype.kind == "f" and not np.isfinite(r).all():
        bad = int(r.size - np.count_nonzero(np.isfinite(r)))
        raise NonFiniteError(f"shard {ref.name}: FP32 reference output '{name}' holds {bad} NaN/inf values; expected finite outputs from the FP32 model")
    if name in errors:
        return
    if r.shape != c.shape:
        errors[name] = f"candidate shape {list(c.shape)} differs from FP32 shape {list(r.shape)} (shard {ref.name})"
        return
    if name not in stats:
        exact = r.dtype.kind in "biuUSO" and c.dtype.kind in "biuUSO"
        if r.dtype.kind == "f" or c.dtype.kind == "f":
            exact = False
        user = gate.output_gate(name) if gate is not None else None
        own = _own_accumulator(gate, name, shared) if gate is not None else None
        stats[name] = _ExactStats(str(r.dtype)) if exact else _FloatStats(str(c.dtype), checks=TaskChecks.for_gate(user), own=own)
    stats[name].update(r, c)


def _own_accumulator(gate: Gate, name: str, shared: dict | None):
    """The metric's own accumulator for one shard: fresh when it can merge (or when ``shared``
    is None: a slice alone); else the comparison's one instance, which sees every slice in order
    and is merged once (:meth:`_FloatStats.merge` skips it)."""
    if shared is not None and name in shared:
        return shared[name]
    acc = gate.metric(name).accumulator()
    if shared is not None and acc is not None and not callable(getattr(acc, "merge", None)):
        shared[name] = acc
    return acc


def verify_mixed(
    reference: onnx.ModelProto | str | os.PathLike,
    fp32_nodes: Iterable[str],
    holdout: Sequence[ShardRef],
    settings: VerifySettings | None = None,
    batch_size: int | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Build the mixed-precision model for ``fp32_nodes`` and verify it on the CPU provider
    through FP16 storage emulation.

    Returns:
        ``(mixed_model, report)``; the report as from :func:`verify`.
    """
    from fp16guard.graph.convert import to_mixed_precision

    ref_model = _as_model(reference)
    mixed = to_mixed_precision(ref_model, set(fp32_nodes))
    return mixed, verify(ref_model, mixed, holdout, settings, batch_size=batch_size, providers=None, emulate=True)
