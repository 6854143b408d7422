"""Decide which nodes stay in FP32 (the content of ``plan.json``).

A node of the main graph is in one of three groups:

* **FP32** — some rule below keeps it in FP32 (listed in ``fp32_nodes`` with a reason);
* **FP16** — it touches FLOAT tensors and no rule applies;
* **neutral** — it touches no FLOAT tensor (integer/bool ops, or ops already in FP16/FP64), or it
  reads only the shape of its float input (Shape, Size): precision does not apply to it.

Rules (reason codes, in the order used to pick the primary ``reason``; ``details`` lists every
rule that applied, as sentences with tensor names and values):

Structural — cannot be overridden, not even by ``force_fp16_nodes``:

* ``has_subgraph`` — If/Loop/Scan: their subgraphs are not instrumented.
* ``custom_domain`` — op outside the default ONNX domain (no schema to trust).
* ``unknown_type`` — touches a value whose tensor type is unknown (sequence, optional, untyped).
* ``no_fp16_kernel`` — the op schema at the model's opset does not allow float16 for a FLOAT
  input/output (checked with ``onnx.defs.get_schema`` type constraints).

User-forced:

* ``forced_name`` — node name matches ``force_fp32_nodes`` (``re.search``).
* ``forced_op_type`` — op type is in ``force_fp32_ops``.

Data (NOTES #3, #5):

* ``initializer_out_of_range`` — reads a float initializer with some |x| > 65504.
* ``constant_out_of_range`` — is, or reads the output of, a Constant/ConstantOfShape whose value
  has some |x| > 65504.
* ``input_above_threshold`` — some float input has max |x| > threshold (or non-finite values).
  This is the rule that the "pin the producer" recipe lacks: Softmax over large logits, the
  Sqrt of a mean of squares, or the layer after a large activation has a small output but would
  read its large input as inf in FP16.
* ``output_above_threshold`` — some float output has max |x| > threshold (or non-finite values).
* ``no_statistics`` — touches a FLOAT tensor (graph input or node output) that has no row in the
  statistics, so nothing is known about its range.

``force_fp16_nodes`` (``re.search`` on the node name) moves a node to FP16 over every user-forced
and data rule; each such node is recorded in ``forced_fp16`` with the rules it overrode. Over a
structural rule it has no effect (recorded with ``applied: false``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
from onnx import numpy_helper

from fp16guard import FP16_MAX
from fp16guard.errors import ConfigError, DataError
from fp16guard.graph.info import TypeInfo, fp16_slots, opset_map, outer_refs, tensor_types
from fp16guard.io.model import FLOAT_TYPES
from fp16guard.settings import PlanSettings

STRUCTURAL = ("has_subgraph", "custom_domain", "unknown_type", "no_fp16_kernel")
REASONS = STRUCTURAL + (
    "forced_name",
    "forced_op_type",
    "initializer_out_of_range",
    "constant_out_of_range",
    "input_above_threshold",
    "output_above_threshold",
    "no_statistics",
)
_REQUIRED_COLUMNS = ("tensor", "max_abs", "nonfinite")


@dataclass
class Plan:
    """Which nodes stay FP32, and why.

    Attributes:
        threshold: the max |x| above which a tensor counts as out of range.
        fp32_nodes: one dict per FP32 node: ``name``, ``op_type``, ``outputs`` (tensor names),
            ``reason`` (primary rule code), ``reasons`` (every rule code that applied),
            ``details`` (sentences).
        forced_fp16: one dict per node matched by ``force_fp16_nodes``: ``name``, ``op_type``,
            ``applied`` (False when a structural rule kept it FP32), ``overridden`` (rule codes
            it overrode), ``details``.
        counts: ``nodes`` (main graph), ``fp32``, ``fp16``, ``neutral``.
    """

    threshold: float
    fp32_nodes: list[dict] = field(default_factory=list)
    forced_fp16: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def fp32_names(self) -> set[str]:
        """Names of the nodes that stay FP32 (what :func:`fp16guard.graph.convert.to_mixed_precision` takes)."""
        return {entry["name"] for entry in self.fp32_nodes}

    def to_dict(self) -> dict:
        """The ``plan.json`` content (JSON-serialisable, deterministic order)."""
        return {
            "threshold": self.threshold,
            "fp32_nodes": [dict(e) for e in self.fp32_nodes],
            "forced_fp16": [dict(e) for e in self.forced_fp16],
            "counts": dict(self.counts),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """Rebuild a plan from :meth:`to_dict` output (e.g. a loaded ``plan.json``).

        Raises:
            ConfigError: ``data`` lacks ``threshold`` or ``fp32_nodes``, or an entry has no name.
        """
        if not isinstance(data, dict) or "threshold" not in data or not isinstance(data.get("fp32_nodes"), list):
            raise ConfigError(f"plan has keys {sorted(data) if isinstance(data, dict) else type(data).__name__}; expected an object with 'threshold' and a list 'fp32_nodes'")
        for entry in data["fp32_nodes"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"plan entry {entry!r} has no 'name'; expected {{'name', 'op_type', 'outputs', 'reason', 'details'}}")
        return cls(
            threshold=float(data["threshold"]),
            fp32_nodes=[dict(e) for e in data["fp32_nodes"]],
            forced_fp16=[dict(e) for e in data.get("forced_fp16", [])],
            counts=dict(data.get("counts", {})),
        )


def _stats_lookup(stats: pa.Table) -> dict[str, tuple[float, int]]:
    missing = [c for c in _REQUIRED_COLUMNS if c not in stats.column_names]
    if missing:
        raise DataError(f"statistics table has columns {stats.column_names}; expected at least {list(_REQUIRED_COLUMNS)}")
    cols = stats.select(list(_REQUIRED_COLUMNS)).to_pydict()
    return {
        t: (float("nan") if m is None else float(m), int(n or 0))
        for t, m, n in zip(cols["tensor"], cols["max_abs"], cols["nonfinite"])
    }


def _out_of_range(max_abs: float, nonfinite: int, threshold: float) -> bool:
    return nonfinite > 0 or math.isnan(max_abs) or max_abs > threshold


def _describe(max_abs: float, nonfinite: int) -> str:
    text = f"max |x| = {max_abs:.6g}"
    return text + (f" and {nonfinite} non-finite values" if nonfinite else "")


#: Elements per chunk when scanning external weights (memory stays ~64 MB whatever the size).
_CHUNK = 1 << 24


def _tensor_max_abs(tensor: onnx.TensorProto, weights_dir: Path | None = None) -> float | None:
    """max |x| of a float tensor proto; None when its data is external and cannot be read.

    External data is read from ``weights_dir`` (the model's folder) through a read-only memory
    map, in chunks, so the model's weights are never all in memory.
    """
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        array = numpy_helper.to_array(tensor)
        return float(np.max(np.abs(array.astype(np.float64)))) if array.size else 0.0
    dtype = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64}.get(tensor.data_type)
    if weights_dir is None or dtype is None:
        return None
    info = {entry.key: entry.value for entry in tensor.external_data}
    base = weights_dir.resolve()
    path = (base / info.get("location", "")).resolve()
    if base not in path.parents or not path.is_file():
        return None  # missing, or escaping the model folder: treated as unknown
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if count == 0:
        return 0.0
    data = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=int(info.get("offset", 0)), shape=(count,))
    return max(float(np.max(np.abs(data[i : i + _CHUNK].astype(np.float64)))) for i in range(0, count, _CHUNK))


def _constant_value_max(node: onnx.NodeProto) -> float | None:
    """max |x| of a Constant/ConstantOfShape float value attribute, None when not float."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOAT_TYPES:
            return _tensor_max_abs(attr.t)
        if attr.name == "value_float":
            return abs(attr.f)
        if attr.name == "value_floats":
            return max((abs(v) for v in attr.floats), default=0.0)
    return None


def make_plan(
    model: onnx.ModelProto,
    stats: pa.Table,
    settings: PlanSettings,
    weights_dir: str | os.PathLike | None = None,
) -> Plan:
    """Apply the rules in the module docstring to every node of the main graph.

    Args:
        model: the FP32 model (node names normalised by :func:`fp16guard.io.model.load_model`).
        stats: reduced statistics, one row per float tensor; only ``tensor``, ``max_abs`` and
            ``nonfinite`` are read.
        settings: threshold and user overrides.
        weights_dir: folder of the model file, to read external-data initializers that are not
            loaded (``load_model(path, load_weights=False)``); default None. An initializer whose
            values cannot be read keeps its readers FP32 (``no_statistics``).

    Returns:
        The plan. Node order in ``fp32_nodes`` follows the graph.

    Raises:
        DataError: the statistics table lacks a required column.
    """
    threshold = float(settings.threshold)
    lookup = _stats_lookup(stats)
    graph = model.graph
    types = tensor_types(model)
    opsets = opset_map(model)
    graph_inputs = {v.name for v in graph.input}
    inits = {t.name: t for t in graph.initializer if t.name not in graph_inputs and t.data_type in FLOAT_TYPES}
    init_max: dict[str, float | None] = {}
    wdir = Path(weights_dir) if weights_dir is not None else None
    constants_out_of_range: dict[str, float] = {}  # Constant output name -> max |x|
    fp32_re = re.compile(settings.force_fp32_nodes) if settings.force_fp32_nodes else None
    fp16_re = re.compile(settings.force_fp16_nodes) if settings.force_fp16_nodes else None
    fp32_ops = set(settings.force_fp32_ops)

    plan = Plan(threshold=threshold)
    counts = {"nodes": len(graph.node), "fp32": 0, "fp16": 0, "neutral": 0}
    for node in graph.node:
        slots = fp16_slots(node, opsets, types)
        if node.op_type in ("Constant", "ConstantOfShape"):
            value_max = _constant_value_max(node)
            if value_max is not None and value_max > FP16_MAX:
                constants_out_of_range.update({o: value_max for o in node.output if o})
        if slots.status in ("no_float", "neutral"):
            counts["neutral"] += 1
            continue
        found: list[tuple[str, str]] = []
        if slots.status != "fp16":
            found.append((slots.status, slots.detail))
        if fp32_re and fp32_re.search(node.name):
            found.append(("forced_name", f"name {node.name!r} matches force_fp32_nodes {settings.force_fp32_nodes!r}"))
        if node.op_type in fp32_ops:
            found.append(("forced_op_type", f"op type {node.op_type} is in force_fp32_ops"))
        found.extend(_data_reasons(node, lookup, types, inits, init_max, constants_out_of_range, threshold, wdir))
        codes = [code for code in REASONS if any(c == code for c, _ in found)]
        if codes and fp16_re and fp16_re.search(node.name):
            structural = [c for c in codes if c in STRUCTURAL]
            plan.forced_fp16.append(
                {
                    "name": node.name,
                    "op_type": node.op_type,
                    "applied": not structural,
                    "overridden": [] if structural else codes,
                    "details": [d for _, d in found],
                }
            )
            if not structural:
                counts["fp16"] += 1
                continue
        elif fp16_re and fp16_re.search(node.name):
            plan.forced_fp16.append({"name": node.name, "op_type": node.op_type, "applied": True, "overridden": [], "details": []})
        if not codes:
            counts["fp16"] += 1
            continue
        counts["fp32"] += 1
        plan.fp32_nodes.append(
            {
                "name": node.name,
                "op_type": node.op_type,
                "outputs": [o for o in node.output if o],
                "reason": codes[0],
                "reasons": codes,
                "details": [d for _, d in found],
            }
        )
    plan.counts = counts
    return plan


def _data_reasons(
    node: onnx.NodeProto,
    lookup: dict[str, tuple[float, int]],
    types: TypeInfo,
    inits: dict[str, onnx.TensorProto],
    init_max: dict[str, float | None],
    constants_out_of_range: dict[str, float],
    threshold: float,
    weights_dir: Path | None,
) -> list[tuple[str, str]]:
    """(code, sentence) for every data rule that applies to ``node`` (see module docstring)."""
    found: list[tuple[str, str]] = []
    if node.op_type in ("Constant", "ConstantOfShape"):
        for out in node.output:
            if out in constants_out_of_range:
                found.append(("constant_out_of_range", f"its value has max |x| = {constants_out_of_range[out]:.6g} > 65504 (FP16 max)"))
    inputs = [n for n in node.input if n] + [n for n in outer_refs(node) if n not in node.input]
    for name in dict.fromkeys(inputs):
        if name in inits:
            if name not in init_max:
                init_max[name] = _tensor_max_abs(inits[name], weights_dir)
            value = init_max[name]
            if value is None:
                found.append(("no_statistics", f"initializer {name!r} has external data that could not be read (pass weights_dir); its range is unknown"))
            elif value > FP16_MAX:
                found.append(("initializer_out_of_range", f"initializer {name!r} has max |x| = {value:.6g} > 65504 (FP16 max)"))
            continue
        if name in constants_out_of_range:
            found.append(("constant_out_of_range", f"input {name!r} is a constant with max |x| = {constants_out_of_range[name]:.6g} > 65504 (FP16 max)"))
        found.extend(_range_finding("input", name, lookup, types, threshold))
    for name in node.output:
        if name:
            found.extend(_range_finding("output", name, lookup, types, threshold))
    return found


def _range_finding(role: str, name: str, lookup: dict, types, threshold: float) -> list[tuple[str, str]]:
    """The data rule for one float input or output ("input"/"output" in ``role``): above the
    threshold, or float with no statistics at all."""
    if name in lookup:
        max_abs, nonfinite = lookup[name]
        if _out_of_range(max_abs, nonfinite, threshold):
            return [(f"{role}_above_threshold", f"{role} {name!r} has {_describe(max_abs, nonfinite)} > threshold {threshold:g}")]
        return []
    if types.is_float32(name):
        return [("no_statistics", f"{role} {name!r} is float but has no statistics")]
    return []
