"""Checks run before any work, so bad input fails fast and leaves nothing behind.

``fp16guard run`` (before its flow starts) and :func:`fp16guard.convert` (before its first
forward pass) run the same checks, in this order:

1. the chosen backend is usable (its ``preflight``);
2. the model is a file (a folder gets its own message), its graph loads, and onnxruntime can run
   every op in it (custom domains, unknown op types: read from onnxruntime's kernel registry,
   :mod:`fp16guard.runners.ort_ops`; the statistics pass runs every model on onnxruntime);
3. ``--gate`` names outputs the model has; ``--force-fp32-ops`` (and ``force_fp16_ops`` where a
   settings version has it) names op types the model has (the message lists the model's op types);
4. every calibration and holdout shard's arrays (read from the ``.npy`` headers only) match the
   model's inputs in name, rank, static dimensions and dtype (integer data for a float input is
   refused; float64 is cast);
5. the holdout is independent of the calibration data: no shard is the same file, or has the
   same content (sha256), as a calibration shard, unless overlap is allowed (the verdict then
   says "not independent");
6. every shard's values are read once for NaN/inf.

The name, version and numeric bounds were checked by the settings models
(:mod:`fp16guard.settings`). NaN/inf in FP32 *activations* can only be found by the statistics pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import onnx

from fp16guard.errors import ConfigError, DataError, ModelError
from fp16guard.io.model import InputSpec, input_specs, load_graph
from fp16guard.io.shards import ShardRef, check_layout, discover_shards, load_shard, peek_shard, prepare_feeds, shard_digests, shard_location

__all__ = [
    "NOT_INDEPENDENT",
    "Overlap",
    "check_data",
    "check_force_ops",
    "check_independent",
    "check_model_path",
    "check_ops",
    "load_checked_graph",
    "model_op_types",
    "preflight",
    "refuse_overlap",
]

#: What a verdict says when the holdout overlaps the calibration data and that was allowed.
NOT_INDEPENDENT = "not independent: the holdout shares data with the calibration set"


@dataclass(frozen=True)
class Overlap:
    """Holdout shards that are calibration shards too.

    Attributes:
        pairs: ``(holdout shard name, calibration shard name, how)`` per overlapping holdout
            shard; ``how`` is ``"same file"`` or ``"same content"``.
    """

    pairs: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def describe(self, limit: int = 3) -> str:
        """``holdout h/a.npz is calibration c/a.npz (same file), ...`` (first ``limit`` pairs)."""
        shown = [f"holdout {h} is calibration {c} ({how})" for h, c, how in self.pairs[:limit]]
        more = len(self.pairs) - limit
        return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def preflight(params, allow_overlap: bool | None = None) -> None:
    """Raise the first UserError found in ``params``' model and data; return None if all fit.

    Args:
        params: :class:`fp16guard.settings.RunParameters`.
        allow_overlap: accept a holdout that overlaps the calibration data; default
            ``params.allow_overlap`` where the parameters have it, else False.

    Raises:
        ModelError, DataError, ConfigError: see the module docstring, in that order.
    """
    from fp16guard.backends.registry import get_backend
    from fp16guard.cluster import check_runner

    # e.g. TensorRTUnavailable names what to install, before any work is done
    get_backend(params.backend, params.providers).preflight()
    if getattr(params, "execution", None) is not None:
        check_runner(params.execution)  # e.g. dask-cuda without its package or without a GPU
    graph = load_checked_graph(params.model)
    check_settings(graph, params.plan, params.verify)
    calib = discover_shards(params.calib, "calibration")
    holdout = discover_shards(params.holdout, "holdout")
    allow = bool(getattr(params, "allow_overlap", False)) if allow_overlap is None else allow_overlap
    check_data(graph, calib, holdout, allow_overlap=allow)


def check_model_path(model: str | os.PathLike) -> Path:
    """The model path, checked to be a file.

    Raises:
        ModelError: it does not exist, or it is a folder (the message lists the ``.onnx`` files
            in it, if any).
    """
    path = Path(model)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.onnx"))
        hint = f"; it holds {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}: give one of them, e.g. {path / found[0]}" if found else "; it holds no .onnx file"
        raise ModelError(f"model {model} is a folder, not a file; expected an .onnx file{hint}")
    if not path.exists():
        raise ModelError(f"model {model} does not exist; expected an .onnx file")
    return path


def load_checked_graph(model: str | os.PathLike) -> onnx.ModelProto:
    """:func:`check_model_path`, then the graph (weights stay in the file), then :func:`check_ops`.

    Raises:
        ModelError: see :func:`check_model_path`, :func:`fp16guard.io.model.load_graph` and
            :func:`check_ops`.
    """
    path = check_model_path(model)
    graph = load_graph(path)
    check_ops(graph, path)
    return graph


def check_ops(graph: onnx.ModelProto, where: str | os.PathLike = "the model") -> None:
    """Refuse a model with ops onnxruntime cannot run (custom domains, unknown op types).

    Needs no data and no session (onnxruntime's kernel registry); found here, the refusal comes
    before the flow starts and before anything is written, not at the first session.

    Raises:
        ModelError: one line naming each op type, its domain and a node.
    """
    from fp16guard.runners.ort_ops import describe_unsupported, unsupported_ops

    missing = unsupported_ops(graph)
    if missing:
        raise ModelError(
            f"model {where}: {describe_unsupported(missing)}; expected ops of the default ONNX domain, ai.onnx.ml or com.microsoft, "
            "or a model-local function that defines them (the statistics pass runs the model on onnxruntime)"
        )


def check_settings(graph: onnx.ModelProto, plan, verify) -> None:
    """Check what the settings name against the model: gate outputs and forced op types.

    Args:
        graph: the model's graph (:func:`load_checked_graph`).
        plan: :class:`fp16guard.settings.PlanSettings`.
        verify: :class:`fp16guard.settings.VerifySettings`.

    Raises:
        ConfigError: a gate names an output the model lacks, or a forced op type is not in it.
    """
    from fp16guard.verify.task_checks import check_gate_outputs

    check_gate_outputs(verify, [o.name for o in graph.graph.output])
    check_force_ops(graph, plan)


def model_op_types(graph: onnx.ModelProto) -> set[str]:
    """Every op type in the model, subgraphs (If/Loop/Scan bodies) included."""
    from fp16guard.graph.info import subgraphs

    found: set[str] = set()

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            found.add(node.op_type)
            for sub in subgraphs(node):
                visit(sub)

    visit(graph.graph)
    return found


def check_force_ops(graph: onnx.ModelProto, plan) -> None:
    """Refuse forced op types the model does not have.

    A misspelt op type (``Softmx``, ``layernorm``) would otherwise force nothing and the run
    would look as if the user's constraint held.

    Args:
        graph: the model's graph.
        plan: settings with ``force_fp32_ops`` (and ``force_fp16_ops`` where present).

    Raises:
        ConfigError: names the unknown op types and lists the model's.
    """
    have = model_op_types(graph)
    for attr in ("force_fp32_ops", "force_fp16_ops"):
        wanted = list(getattr(plan, attr, None) or [])
        unknown = [op for op in wanted if op not in have]
        if unknown:
            flag = "--" + attr.replace("_", "-")
            near = {op: [h for h in have if h.lower() == op.lower()] for op in unknown}
            hints = "".join(f" ('{op}': did you mean '{near[op][0]}'?)" for op in unknown if near[op])
            raise ConfigError(
                f"{flag} names op type{'s' if len(unknown) > 1 else ''} {', '.join(repr(o) for o in unknown)} that the model does not have{hints}; "
                f"expected op types of the model: {', '.join(sorted(have))}"
            )


def check_data(graph: onnx.ModelProto, calib: Sequence[ShardRef], holdout: Sequence[ShardRef], allow_overlap: bool = False) -> Overlap:
    """Check calibration and holdout shards against the model and each other.

    Headers first (cheap), then independence (one read of each file to hash it), then values
    (NaN/inf), so the cheapest mistake is reported first.

    Args:
        graph: the model's graph.
        calib: calibration shards.
        holdout: holdout shards (may be empty: nothing to compare).
        allow_overlap: return the overlap instead of refusing it.

    Returns:
        The overlap (empty when the holdout is independent).

    Raises:
        DataError: a shard does not fit the model, holds NaN/inf, or the holdout overlaps the
            calibration data and ``allow_overlap`` is False.
    """
    specs = input_specs(graph)
    for ref in [*calib, *holdout]:
        check_layout(ref, peek_shard(ref), specs)
    overlap = check_independent(calib, holdout, allow_overlap)
    # Values after every header: NaN/inf in an input shows here in seconds (one read of the
    # data, cheap next to the forward passes), not minutes later inside the flow.
    check_values([*calib, *holdout], specs)
    return overlap


def check_values(refs: Iterable[ShardRef], specs: Sequence[InputSpec]) -> None:
    """Load each shard once and check its values (NaN/inf, casts); see :func:`prepare_feeds`."""
    for ref in refs:
        prepare_feeds(ref, load_shard(ref), specs)


def check_independent(calib: Sequence[ShardRef], holdout: Sequence[ShardRef], allow_overlap: bool = False) -> Overlap:
    """Whether any holdout shard is a calibration shard: the same file (and feed index), or
    the same content (:func:`fp16guard.io.shards.shard_digest`).

    Verification on data the plan was made and repaired on says little about unseen inputs,
    so an overlap is refused unless allowed.

    Returns:
        The overlap (empty when independent).

    Raises:
        DataError: there is an overlap and ``allow_overlap`` is False.
    """
    if not holdout:
        return Overlap()
    # A place is a resolved path or an object's URL (plus the feed index): shards by URL too.
    by_place = {shard_location(r): r.name for r in calib}
    by_digest: dict[str, str] = {}
    for ref, digest in zip(calib, shard_digests(calib)):
        by_digest.setdefault(digest, ref.name)
    pairs = []
    for ref, digest in zip(holdout, shard_digests(holdout)):
        place = shard_location(ref)
        if place in by_place:
            pairs.append((ref.name, by_place[place], "same file"))
            continue
        same = by_digest.get(digest)
        if same is not None:
            pairs.append((ref.name, same, "same content"))
    overlap = Overlap(tuple(pairs))
    refuse_overlap(overlap, allow_overlap)
    return overlap


def refuse_overlap(overlap: Overlap, allow_overlap: bool = False) -> None:
    """Raise the overlap refusal when ``overlap`` is not empty and not allowed.

    One message for every entry point: the CLI's preflight, :func:`fp16guard.convert`, and the
    flow itself for runs no CLI checked (deployments, events: ``tasks.inputs``' overlap from the
    digests it already has).

    Raises:
        DataError: names the first overlapping shards and how to accept them.
    """
    if overlap and not allow_overlap:
        raise DataError(
            f"the holdout overlaps the calibration data: {overlap.describe()}; expected holdout data the calibration never saw "
            f"(verifying on calibration data says little about unseen inputs); pass --allow-overlap (Python: allow_overlap=True; "
            f"a deployment run: its allow_overlap parameter) to accept it, and the verdict will say '{NOT_INDEPENDENT.split(':')[0]}'"
        )
