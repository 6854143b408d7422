"""Attribute FP16 error to nodes: how much error each node adds on its own.

For every node that a mixed-precision build would run in FP16, the **local error** is the error
of that node alone in FP16 storage, on exact FP32 inputs: its FP16 inputs rounded through FP16
(as the build stores them), its computation in FP32 (as FP16 storage emulation and tensor cores
do), its FP16 outputs rounded through FP16, compared with the FP32 node on the same inputs.
It is reported relative to the FP32 output's largest magnitude, as the verification gate measures
outputs (``max |local - fp32| / max |fp32|``; ``inf`` when the local result is not finite).
A node that cancels nearly equal large numbers, sums many terms, or reads values below FP16's
normal range shows a large local error; a node whose error only comes from upstream shows none.

The **input error** is what remains when the node alone is kept FP32: FP32 computation and
output, FP32 weights, but its activation inputs still rounded through FP16 by their FP16
producers. When it is most of the local error (a subtraction of two nearly equal large
activations), the error comes from storing the inputs, and their producers must be FP32 too.

How it is computed (memory-bounded): a copy of the FP32 model gets, for a window of FP16 nodes
at a time, a shadow of each node on FP16-rounded copies of its FP32 inputs, and in-graph
reductions ``ReduceMax(Abs(round16(shadow) - fp32))`` and ``ReduceMax(Abs(fp32))``; only those
scalars leave onnxruntime. The calibration slice runs once per window; nothing else is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from fp16guard.graph.info import NameAllocator, all_names, fp16_slots, opset_map, tensor_types
from fp16guard.io.model import input_specs
from fp16guard.io.shards import ShardRef, batch_count, head, iter_slices, load_shard, prepare_feeds, slice_size

__all__ = ["LocalError", "local_errors", "local_error_model", "global_errors"]

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


@dataclass(frozen=True)
class LocalError:
    """The error one node adds in FP16 on exact inputs, over the calibration slice.

    Attributes:
        node: node name.
        op_type: op type.
        rel_error: worst over its FP16 outputs of ``max |local - fp32| / max |fp32|`` (``inf``
            when the local result is not finite, or the FP32 output is all zero and the local
            one is not).
        abs_error: the matching ``max |local - fp32|``.
        output: the output tensor with the worst relative error.
        input_error: the relative error of that output when the node alone is FP32 and its
            activation inputs stay FP16-rounded (0.0 when it reads none).
    """

    node: str
    op_type: str
    rel_error: float
    abs_error: float
    output: str
    input_error: float = 0.0


def _rel(err: float, ref: float) -> float:
    if math.isnan(err) or math.isinf(err):
        return math.inf
    if ref == 0:
        return 0.0 if err == 0 else math.inf
    return err / ref


def local_error_model(model: onnx.ModelProto, nodes: Iterable[str]) -> tuple[onnx.ModelProto, dict[str, list[tuple[str, str, str]]]]:
    """A copy of ``model`` that also computes the local FP16 error of each node in ``nodes``.

    Args:
        model: the FP32 model, weights loaded (not modified).
        nodes: names of main-graph nodes whose local error to compute; nodes that cannot run in
            FP16 (``fp16_slots`` status other than ``fp16``) are skipped.

    Returns:
        ``(model, outputs)``: ``outputs[node] = [(tensor, err, ref, input_err), ...]`` names, per
        FP16 output of the node, the scalar graph outputs holding ``max |local - fp32|``,
        ``max |fp32|`` and ``max |fp32 node on FP16-rounded activations - fp32|`` (input_err is
        None when the node reads no FP16 activation).
    """
    wanted = set(nodes)
    types = tensor_types(model)
    opsets = opset_map(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    alloc = NameAllocator(all_names(model))
    rounded: dict[str, str] = {}  # FP32 tensor -> its FP16-rounded copy
    stored = {t.name for t in model.graph.initializer} - {v.name for v in model.graph.input}
    extra: list[onnx.NodeProto] = []
    outputs: dict[str, list[tuple[str, str, str]]] = {}

    def round16(name: str) -> str:
        if name not in rounded:
            half = alloc.new(f"{name}__attr16")
            back = alloc.new(f"{name}__attr_rounded")
            extra.append(helper.make_node("Cast", [name], [half], name=alloc.new(f"{half}__cast"), to=FLOAT16))
            extra.append(helper.make_node("Cast", [half], [back], name=alloc.new(f"{back}__cast"), to=FLOAT))
            rounded[name] = back
        return rounded[name]

    for node in model.graph.node:
        if node.name not in wanted:
            continue
        slots = fp16_slots(node, opsets, types)
        if slots.status != "fp16" or not slots.outputs:
            continue
        shadow = onnx.NodeProto()
        shadow.CopyFrom(node)
        shadow.name = alloc.new(f"{node.name}__attr_local")
        for k in slots.inputs:
            shadow.input[k] = round16(node.input[k])
        for k, out in enumerate(node.output):
            if out:
                shadow.output[k] = alloc.new(f"{out}__attr_local")
        extra.append(shadow)
        activations = [k for k in slots.inputs if node.input[k] not in stored]
        pinned = None
        if activations:  # the node in FP32 (weights and output too), reading FP16-stored activations
            pinned = onnx.NodeProto()
            pinned.CopyFrom(node)
            pinned.name = alloc.new(f"{node.name}__attr_pinned")
            for k in activations:
                pinned.input[k] = round16(node.input[k])
            for k, out in enumerate(node.output):
                if out:
                    pinned.output[k] = alloc.new(f"{out}__attr_pinned")
            extra.append(pinned)
        pairs = []
        for k in sorted(slots.outputs):
            out = node.output[k]
            local = round16(shadow.output[k])
            diff = alloc.new(f"{out}__attr_diff")
            absd = alloc.new(f"{out}__attr_absdiff")
            absr = alloc.new(f"{out}__attr_absref")
            err = alloc.new(f"{out}__attr_err")
            ref = alloc.new(f"{out}__attr_ref")
            extra.append(helper.make_node("Sub", [local, out], [diff], name=alloc.new(f"{diff}__sub")))
            extra.append(helper.make_node("Abs", [diff], [absd], name=alloc.new(f"{absd}__abs")))
            # ReduceMax drops a NaN unless it comes first; sum(d - d) is 0, or NaN when any d is not finite.
            dmax, nanflag, dd = alloc.new(f"{out}__attr_dmax"), alloc.new(f"{out}__attr_nan"), alloc.new(f"{out}__attr_dd")
            extra.append(helper.make_node("ReduceMax", [absd], [dmax], name=alloc.new(f"{dmax}__max"), keepdims=0))
            extra.append(helper.make_node("Sub", [diff, diff], [dd], name=alloc.new(f"{dd}__sub")))
            extra.append(helper.make_node("ReduceSum", [dd], [nanflag], name=alloc.new(f"{nanflag}__sum"), keepdims=0))
            extra.append(helper.make_node("Add", [dmax, nanflag], [err], name=alloc.new(f"{err}__add")))
            extra.append(helper.make_node("Abs", [out], [absr], name=alloc.new(f"{absr}__abs")))
            extra.append(helper.make_node("ReduceMax", [absr], [ref], name=alloc.new(f"{ref}__max"), keepdims=0))
            graph.output.extend([helper.make_tensor_value_info(err, FLOAT, []), helper.make_tensor_value_info(ref, FLOAT, [])])
            input_err = None
            if pinned is not None:
                input_err = alloc.new(f"{out}__attr_inerr")
                pdiff, pabs = alloc.new(f"{out}__attr_pdiff"), alloc.new(f"{out}__attr_pabs")
                extra.append(helper.make_node("Sub", [pinned.output[k], out], [pdiff], name=alloc.new(f"{pdiff}__sub")))
                extra.append(helper.make_node("Abs", [pdiff], [pabs], name=alloc.new(f"{pabs}__abs")))
                pmax, pnan, pdd = alloc.new(f"{out}__attr_pmax"), alloc.new(f"{out}__attr_pnan"), alloc.new(f"{out}__attr_pdd")
                extra.append(helper.make_node("ReduceMax", [pabs], [pmax], name=alloc.new(f"{pmax}__max"), keepdims=0))
                extra.append(helper.make_node("Sub", [pdiff, pdiff], [pdd], name=alloc.new(f"{pdd}__sub")))
                extra.append(helper.make_node("ReduceSum", [pdd], [pnan], name=alloc.new(f"{pnan}__sum"), keepdims=0))
                extra.append(helper.make_node("Add", [pmax, pnan], [input_err], name=alloc.new(f"{input_err}__add")))
                graph.output.append(helper.make_tensor_value_info(input_err, FLOAT, []))
            pairs.append((out, err, ref, input_err))
        outputs[node.name] = pairs
    graph.node.extend(extra)
    return result, outputs


def local_errors(
    model: onnx.ModelProto,
    nodes: Sequence[str],
    shards: Sequence[ShardRef],
    samples: int,
    batch_size: int | None = None,
    window: int = 256,
) -> list[LocalError]:
    """The local FP16 error of each node in ``nodes``, worst first.

    Args:
        model: the FP32 model, weights loaded.
        nodes: candidate nodes (those the build would run in FP16).
        shards: calibration shards; the first ``samples`` samples are used.
        samples: how many samples to run (at least 1).
        batch_size: samples per inference call (default: the whole slice).
        window: nodes instrumented per pass; the slice runs once per window, so memory holds one
            window's shadow tensors at a time.

    Returns:
        One :class:`LocalError` per node that can run in FP16, sorted by ``rel_error`` descending.
    """
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner

    specs = input_specs(model)
    feeds = _slice_feeds(shards, specs, samples)
    by_name = {n.name: n for n in model.graph.node}
    results: list[LocalError] = []
    order = [n for n in nodes if n in by_name]
    for start in range(0, len(order), max(1, window)):
        shadow_model, outs = local_error_model(model, order[start : start + window])
        if not outs:
            continue
        names = [name for pairs in outs.values() for _, e, r, i in pairs for name in (e, r, i) if name]
        acc = dict.fromkeys(names, 0.0)
        with OnnxRuntimeRunner(shadow_model) as runner:
            for batch in feeds:
                size = slice_size(specs, batch_count(batch), batch_size)
                for part in iter_slices(batch, size):
                    values = runner.infer(part, names)
                    for name in names:
                        v = float(np.asarray(values[name]))
                        acc[name] = math.inf if math.isnan(v) or math.isnan(acc[name]) else max(acc[name], v)
        for node_name, pairs in outs.items():
            worst = max(((_rel(acc[e], acc[r]), acc[e], out, _rel(acc[i], acc[r]) if i else 0.0) for out, e, r, i in pairs), key=lambda t: t[0])
            results.append(LocalError(node_name, by_name[node_name].op_type, *worst))
    results.sort(key=lambda r: -r.rel_error)
    return results


def _slice_feeds(shards: Sequence[ShardRef], specs, samples: int) -> list[dict[str, np.ndarray]]:
    """Prepared feeds of the first ``samples`` samples, one dict per shard used."""
    out: list[dict[str, np.ndarray]] = []
    left = max(1, samples)
    for ref in shards:
        feeds = prepare_feeds(ref, load_shard(ref), specs)
        n = batch_count(feeds)  # along each input's batch axis (a state [2, N, H], a rank-0 rate)
        take = min(n, left)
        out.append(head(feeds, take))
        left -= take
        if left <= 0:
            break
    return out


def _compare(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, bool]:
    """(max |cand - ref| where ref is finite, max |ref| there, whether cand departs non-finitely)."""
    r, c = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
    if r.shape != c.shape:
        return math.inf, 0.0, True
    fin = np.isfinite(r)
    bad = bool(np.any(~np.isfinite(c[fin])))
    if not fin.all():  # a non-finite FP32 value must be matched exactly (-inf masks, say)
        rn, cn = r[~fin], c[~fin]
        bad = bad or bool(np.any(~((rn == cn) | (np.isnan(rn) & np.isnan(cn)))))
    if not fin.any():
        return 0.0, 0.0, bad
    return float(np.max(np.abs(c[fin] - r[fin]))), float(np.max(np.abs(r[fin]))), bad


def global_errors(
    model: onnx.ModelProto,
    fp32_nodes: Iterable[str],
    shards: Sequence[ShardRef],
    samples: int,
    batch_size: int | None = None,
    window: int = 128,
) -> dict[str, float]:
    """Relative error of every float tensor of the main graph in the candidate, against FP32.

    The candidate is the mixed-precision build for ``fp32_nodes`` through FP16 storage emulation.
    Both models run side by side on the first ``samples`` calibration samples with a window of
    ``window`` intermediate tensors exposed at a time (memory: one window of tensors for one
    inference slice); each tensor is reduced to ``max |cand - fp32| / max |fp32|`` at once
    (``inf`` when the candidate has a non-finite value where FP32 has none, or vice versa).

    Returns:
        ``{tensor: relative error}`` for every FLOAT node output of the main graph.
    """
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.graph.emulate import emulate_fp16_storage
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner

    candidate = emulate_fp16_storage(to_mixed_precision(model, set(fp32_nodes), check=False), check=False)
    types = tensor_types(model)
    produced = {o for n in candidate.graph.node for o in n.output}
    names = [o for n in model.graph.node for o in n.output if o and types.is_float32(o) and o in produced]
    names = list(dict.fromkeys(names))
    specs = input_specs(model)
    feeds = _slice_feeds(shards, specs, samples)
    ref_model, cand_model = onnx.ModelProto(), onnx.ModelProto()
    ref_model.CopyFrom(model)
    cand_model.CopyFrom(candidate)
    keep_ref, keep_cand = len(ref_model.graph.output), len(cand_model.graph.output)
    acc: dict[str, list] = {n: [0.0, 0.0, False] for n in names}
    for start in range(0, len(names), max(1, window)):
        part = names[start : start + window]
        for m, keep in ((ref_model, keep_ref), (cand_model, keep_cand)):
            del m.graph.output[keep:]
            present = {o.name for o in m.graph.output}
            m.graph.output.extend(helper.make_tensor_value_info(n, FLOAT, None) for n in part if n not in present)
        with OnnxRuntimeRunner(ref_model) as ref_run, OnnxRuntimeRunner(cand_model) as cand_run:
            for batch in feeds:
                size = slice_size(specs, next(iter(batch.values())).shape[0], batch_size or 4)
                for piece in iter_slices(batch, size):
                    r_out = ref_run.infer(piece, part)
                    c_out = cand_run.infer(piece, part)
                    for n in part:
                        d, m_, bad = _compare(r_out[n], c_out[n])
                        a = acc[n]
                        a[0], a[1], a[2] = max(a[0], d), max(a[1], m_), a[2] or bad
                    del r_out, c_out
    return {n: (math.inf if bad else _rel(d, m_)) for n, (d, m_, bad) in acc.items()}
