"""The ``fold``, ``pin`` and ``auto`` plan strategies (see :mod:`fp16guard.plan.strategies`).

``fold`` runs two exact graph passes on the FP32 model and plans the result:

1. :func:`fp16guard.graph.fold_batchnorm.fold_batchnorm` — BatchNormalization into the Conv before it;
2. :func:`fp16guard.graph.fold_scales.solve_scales` / :func:`~fp16guard.graph.fold_scales.apply_scales`
   — power-of-two scales chosen from the statistics, folded into weights, biases and constants,
   restored by one Mul where a region ends;

then the rules (:func:`fp16guard.plan.planner.make_plan`) on the folded model with the statistics it
would have measured (:func:`~fp16guard.graph.fold_scales.scaled_stats`). Whatever folding could not
bring into range is pinned by the range rule as before, so the plan is safe by the same argument;
the flow then verifies the built artifact against the original FP32 model like any plan.

``plan.json`` gets two keys besides the rules' ones:

* ``strategy``: ``{"requested", "used", "why", "compute_fp32": {"pin": n, "fold": m}}``;
* ``islands``: FP16 runs moved to FP32 because their Casts
  cost more than they save (:mod:`fp16guard.plan.strategies.islands`);
* ``folding`` (only when the folded model is used): ``batchnorm`` (the folded pairs),
  ``exponents`` (tensor -> e, stored as x / 2**e; what the build re-applies), ``regions`` (each
  class of tensors that needed a scale: size, first/last tensor, exponent, scale, ``folded`` or
  ``refused``, why), ``restores`` (tensor, exponent, reader kind), ``dropped_biases`` (biases
  below FP16's resolution of their node's output once scaled, set to 0: node, bias, sizes),
  ``notes``.

The artifact is built from ``model_for_plan(original, plan)``: the same passes replayed from the
recorded exponents (deterministic), so the weights of ``model.mixed.onnx`` carry the scales.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import onnx
import pyarrow as pa

from fp16guard.errors import ConfigError
from fp16guard.graph.fold_batchnorm import fold_batchnorm
from fp16guard.graph.fold_scales import SMALLEST_COLUMNS, TensorRange, apply_scales, scaled_stats, solve_scales
from fp16guard.plan.planner import make_plan
from fp16guard.plan.strategies.islands import merge_islands
from fp16guard.settings import PlanSettings

__all__ = ["STRATEGIES", "COMPUTE_OPS", "ranges_from_stats", "plan_model", "plan_with_strategy", "model_for_plan", "compute_fp32"]

#: The strategies ``PlanSettings.strategy`` accepts.
STRATEGIES = ("auto", "pin", "fold")
#: Ops that hold most of a network's arithmetic: what "keeps fewer nodes FP32" counts.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"})


def ranges_from_stats(stats: pa.Table) -> dict[str, TensorRange]:
    """``{tensor: TensorRange}`` from a statistics table (``max_abs``, ``nonfinite``, the
    smallest non-zero |x| when the table has one of ``SMALLEST_COLUMNS``, and the mean |x| from
    ``abs_sum / examined``; null there = unknown)."""
    smallest = next((c for c in SMALLEST_COLUMNS if c in stats.column_names), None)
    mean = [c for c in ("abs_sum", "examined") if c in stats.column_names]
    columns = ["tensor", "max_abs", "nonfinite"] + ([smallest] if smallest else []) + (mean if len(mean) == 2 else [])
    data = stats.select(columns).to_pydict()
    out: dict[str, TensorRange] = {}
    for i, name in enumerate(data["tensor"]):
        m = data["max_abs"][i]
        s = data[smallest][i] if smallest else None
        total, count = (data["abs_sum"][i], data["examined"][i]) if len(mean) == 2 else (None, None)
        mean_abs = float(total) / count if total is not None and count else None
        out[name] = TensorRange(float("nan") if m is None else float(m), int(data["nonfinite"][i] or 0), None if s is None else float(s), mean_abs)
    return out


def compute_fp32(plan: Mapping) -> int:
    """How many compute nodes (:data:`COMPUTE_OPS`) a plan dict keeps FP32."""
    return sum(1 for e in plan.get("fp32_nodes", []) if e.get("op_type") in COMPUTE_OPS)


def _fold(model: onnx.ModelProto, stats: pa.Table, settings: PlanSettings) -> tuple[dict, onnx.ModelProto]:
    """The folded plan (dict with ``folding``) and the folded FP32 model."""
    bn_model, bn_folds = fold_batchnorm(model)
    solution = solve_scales(bn_model, ranges_from_stats(stats), float(settings.threshold))
    folded, new_tensors = apply_scales(bn_model, solution.exponents, [d["node"] for d in solution.dropped_biases])
    plan = make_plan(folded, scaled_stats(stats, folded, solution.exponents, new_tensors), settings).to_dict()
    readers = {}
    for node in folded.graph.node:
        for name in node.input:
            readers.setdefault(name, node.op_type)
    restores = [
        {"tensor": source, "exponent": int(solution.exponents.get(source, 0)), "as": name, "read_by": readers.get(name, "graph output")}
        for name, (source, r) in sorted(new_tensors.items())
        if r == 0
    ] + [{"tensor": y.name, "exponent": int(solution.exponents[y.name]), "as": y.name, "read_by": "graph output"} for y in folded.graph.output if solution.exponents.get(y.name)]
    plan["folding"] = {
        "batchnorm": bn_folds,
        "exponents": dict(sorted(solution.exponents.items())),
        "regions": solution.regions,
        "restores": restores,
        "rescales": [{"tensor": source, "to_exponent": r, "as": name} for name, (source, r) in sorted(new_tensors.items()) if r and not name.endswith("__scaled")],
        "dropped_biases": solution.dropped_biases,
        "notes": solution.notes,
    }
    return plan, folded


def plan_model(
    model: onnx.ModelProto,
    stats: pa.Table,
    settings: PlanSettings,
    weights_dir: str | os.PathLike | None = None,
) -> tuple[dict, onnx.ModelProto]:
    """Make the plan with ``settings.strategy`` (see :mod:`fp16guard.plan.strategies`).

    Args:
        model: the FP32 model; for ``fold`` and ``auto`` its weights must be loaded.
        stats: reduced statistics (``stats.parquet``).
        settings: plan settings, including ``strategy`` (default ``auto``).
        weights_dir: folder to read external weights from for ``pin`` (see ``make_plan``).

    Returns:
        ``(plan dict, the FP32 model the plan is for)``: the folded model when folding was used,
        else ``model`` itself. The dict is ``plan.json``'s content.
    """
    strategy = getattr(settings, "strategy", "auto")
    if strategy not in STRATEGIES:
        raise ConfigError(f"plan strategy {strategy!r} is not known; expected one of {list(STRATEGIES)}")
    if strategy == "pin":
        plan = make_plan(model, stats, settings, weights_dir=weights_dir).to_dict()
        plan["strategy"] = {"requested": "pin", "used": "pin", "why": "requested", "compute_fp32": {"pin": compute_fp32(plan)}}
        return merge_islands(model, plan), model
    folded_plan, folded = _fold(model, stats, settings)
    if strategy == "fold":
        folded_plan["strategy"] = {"requested": "fold", "used": "fold", "why": "requested", "compute_fp32": {"fold": compute_fp32(folded_plan)}}
        return merge_islands(folded, folded_plan), folded
    pinned = make_plan(model, stats, settings, weights_dir=weights_dir).to_dict()
    counts = {"pin": compute_fp32(pinned), "fold": compute_fp32(folded_plan)}
    key = lambda p: (compute_fp32(p), len(p["fp32_nodes"]))  # noqa: E731
    if folded_plan["folding"]["exponents"] and key(folded_plan) < key(pinned):
        folded_plan["strategy"] = {
            "requested": "auto",
            "used": "fold",
            "why": f"folding keeps {counts['fold']} compute nodes FP32 against {counts['pin']} when pinning",
            "compute_fp32": counts,
        }
        return merge_islands(folded, folded_plan), folded
    why = "no tensor needed a scale" if not folded_plan["folding"]["exponents"] else f"folding keeps {counts['fold']} compute nodes FP32, pinning {counts['pin']}: no gain"
    pinned["strategy"] = {"requested": "auto", "used": "pin", "why": why, "compute_fp32": counts}
    return merge_islands(model, pinned), model


def plan_with_strategy(model_path: str | os.PathLike, stats: pa.Table, settings: PlanSettings) -> dict:
    """:func:`plan_model` from a model file: graph only for ``pin``, weights loaded otherwise."""
    from fp16guard.io.model import load_graph, load_model

    strategy = getattr(settings, "strategy", "auto")
    model = load_graph(model_path) if strategy == "pin" else load_model(model_path)
    plan, _ = plan_model(model, stats, settings, weights_dir=Path(model_path).parent)
    return plan


def model_for_plan(model: onnx.ModelProto, plan: Mapping) -> onnx.ModelProto:
    """The FP32 model a plan is for: ``model`` itself, or the folded model replayed from the plan's
    ``folding`` record (same passes, recorded exponents).

    Raises:
        ConfigError: the record does not fit ``model`` (another model, or a corrupt plan).
    """
    folding = plan.get("folding") if isinstance(plan, Mapping) else None
    if not folding:
        return model
    exponents = folding.get("exponents")
    if not isinstance(exponents, Mapping) or not all(isinstance(v, int) and not isinstance(v, bool) for v in exponents.values()):
        raise ConfigError("plan 'folding' has no 'exponents' object of integers; expected the plan.json written by the fold strategy")
    from fp16guard.errors import ModelError

    bn_model, folds = fold_batchnorm(model)
    if [dict(f) for f in folding.get("batchnorm", [])] != folds:
        raise ConfigError("plan 'folding.batchnorm' does not match the BatchNormalization folds of this model (was the plan made for another model?)")
    dropped = folding.get("dropped_biases", [])
    if not isinstance(dropped, list) or not all(isinstance(d, Mapping) and isinstance(d.get("node"), str) for d in dropped):
        raise ConfigError("plan 'folding.dropped_biases' is not a list of objects with a 'node' name; expected the plan.json written by the fold strategy")
    try:
        folded, _ = apply_scales(bn_model, {str(k): int(v) for k, v in exponents.items()}, [d["node"] for d in dropped])
    except ModelError as exc:
        raise ConfigError(f"plan 'folding' does not fit this model: {exc}") from None
    return folded

