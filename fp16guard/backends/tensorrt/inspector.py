"""Engine inspector JSON: parse both formats, and check that plan nodes really run in FP32.

``IEngineInspector.get_engine_information(JSON)`` on an engine built with DETAILED profiling
verbosity lists every engine layer with its input and output tensors. The schema changed in
TensorRT 11 (docs/FACTS.md #9):

* 10.x (and 8.6-9.x): engine I/O names under ``"Bindings"`` (a list of strings); each layer
  tensor has one ``"Format/Datatype"`` string, either short (``"Half"``, ``"Float"``) or, when an
  execution context was attached, long (``"Row major linear FP32"``,
  ``"Channel major FP16 format where channel % 8 == 0"``).
* 11.x: ``"I/O Tensors"`` (a list of objects with ``Name``, ``IOMode``, ``DataType``, ...) and,
  per layer tensor, separate ``"Format"`` and ``"DataType"`` fields.

With a lower verbosity ``"Layers"`` is a list of names only, which cannot be checked.
TensorRT may ignore precision constraints when it has no FP32 kernel (and fusion can carry FP16
through a pinned node), so the build is checked here, after the fact, on what the engine holds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from fp16guard.backends.tensorrt.mapping import LayerDesc, NodeDesc, map_layers

#: Canonical precisions of floating-point data; everything else is an integer/bool type.
FLOAT_DTYPES = frozenset({"fp32", "fp16", "bf16", "fp8", "fp4", "tf32"})

# Order matters: the first pattern found in the (lower-cased) text wins. Short names first as
# whole words; then the tokens TensorRT puts in long format descriptions.
_DTYPE_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^(float|float32|fp32|kfloat)$"), "fp32"),
    (re.compile(r"^(half|float16|fp16|khalf)$"), "fp16"),
    (re.compile(r"^(bf16|bfloat16|kbf16)$"), "bf16"),
    (re.compile(r"^(fp8|kfp8|e4m3)$"), "fp8"),
    (re.compile(r"^(fp4|kfp4|e2m1)$"), "fp4"),
    (re.compile(r"^(int8|kint8)$"), "int8"),
    (re.compile(r"^(int32|kint32)$"), "int32"),
    (re.compile(r"^(int64|kint64)$"), "int64"),
    (re.compile(r"^(int4|kint4)$"), "int4"),
    (re.compile(r"^(uint8|kuint8)$"), "uint8"),
    (re.compile(r"^(bool|kbool)$"), "bool"),
    (re.compile(r"\bbf16\b|\bbfloat16\b"), "bf16"),
    (re.compile(r"\bfp16\b|\bhalf\b"), "fp16"),
    (re.compile(r"\bfp32\b|\bfloat\b"), "fp32"),
    (re.compile(r"\bfp8\b"), "fp8"),
    (re.compile(r"\bfp4\b"), "fp4"),
    (re.compile(r"\buint8\b"), "uint8"),
    (re.compile(r"\bint8\b"), "int8"),
    (re.compile(r"\bint32\b"), "int32"),
    (re.compile(r"\bint64\b"), "int64"),
    (re.compile(r"\bint4\b"), "int4"),
    (re.compile(r"\bbool\b"), "bool"),
]


def canonical_dtype(text: str | None) -> str:
    """``"Half"`` / ``"Channel major FP16 format where channel % 8 == 0"`` -> ``"fp16"``;
    ``"Float"`` / ``"Row major linear FP32"`` -> ``"fp32"``; unknown text -> ``"unknown"``."""
    low = str(text or "").strip().lower()
    if not low:
        return "unknown"
    for pattern, name in _DTYPE_PATTERNS:
        if pattern.search(low):
            return name
    return "unknown"


@dataclass(frozen=True)
class EngineTensor:
    """One input or output of an engine layer.

    Attributes:
        name: tensor name.
        dtype: canonical precision (:func:`canonical_dtype`).
        raw: the text it was read from (``Format/Datatype`` or ``DataType``).
        format: memory format text ('' when not given separately).
    """

    name: str
    dtype: str
    raw: str
    format: str = ""


@dataclass(frozen=True)
class EngineLayer:
    """One engine layer from the inspector."""

    index: int
    name: str
    layer_type: str
    metadata: str
    inputs: tuple[EngineTensor, ...]
    outputs: tuple[EngineTensor, ...]
    tactic: str = ""

    def describe(self) -> LayerDesc:
        """The layer as :mod:`.mapping` sees it."""
        return LayerDesc(
            self.index,
            self.name,
            self.layer_type,
            self.metadata,
            tuple(t.name for t in self.inputs),
            tuple(t.name for t in self.outputs),
        )


@dataclass
class EngineInfo:
    """A parsed inspector document.

    Attributes:
        schema: "10.x" (``Bindings``, ``Format/Datatype``), "11.x" (``I/O Tensors``, split fields)
            or "names-only" (profiling verbosity below DETAILED: no per-layer types).
        layers: the engine layers (empty for "names-only").
        layer_names: every layer name (also for "names-only").
        io_tensors: engine inputs/outputs: ``{"name", "mode", "dtype"}`` (mode/dtype '' when unknown).
    """

    schema: str
    layers: list[EngineLayer] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    io_tensors: list[dict] = field(default_factory=list)


class InspectorFormatError(ValueError):
    """The text is not engine inspector JSON of a known shape."""


def parse_engine_info(doc: str | bytes | Mapping) -> EngineInfo:
    """Parse ``get_engine_information(LayerInformationFormat.JSON)`` output of TensorRT 8.6-11.x.

    Args:
        doc: the JSON text, or the already decoded object.

    Raises:
        InspectorFormatError: not JSON, or no ``"Layers"`` list.
    """
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise InspectorFormatError(f"engine inspector output is not JSON ({exc})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("Layers"), list):
        raise InspectorFormatError("engine inspector JSON has no 'Layers' list; expected get_engine_information(JSON) output")
    raw_layers = doc["Layers"]
    io = _io_tensors(doc)
    if "I/O Tensors" in doc:
        schema = "11.x"
    elif "Bindings" in doc:
        schema = "10.x"
    else:
        schema = "11.x" if any(_has_split_fields(l) for l in raw_layers if isinstance(l, Mapping)) else "10.x"
    if raw_layers and all(isinstance(l, str) for l in raw_layers):
        return EngineInfo("names-only", [], list(raw_layers), io)
    layers = []
    for index, raw in enumerate(raw_layers):
        if isinstance(raw, str):  # mixed lists do not occur; keep the name, without types
            layers.append(EngineLayer(index, raw, "", "", (), ()))
            continue
        layers.append(
            EngineLayer(
                index=index,
                name=str(raw.get("Name", "")),
                layer_type=str(raw.get("LayerType", "")),
                metadata=str(raw.get("Metadata", "") or ""),
                inputs=tuple(_tensor(t) for t in raw.get("Inputs", []) or [] if isinstance(t, Mapping)),
                outputs=tuple(_tensor(t) for t in raw.get("Outputs", []) or [] if isinstance(t, Mapping)),
                tactic=str(raw.get("TacticName", "") or ""),
            )
        )
    return EngineInfo(schema, layers, [l.name for l in layers], io)


def _has_split_fields(layer: Mapping) -> bool:
    tensors = list(layer.get("Inputs", []) or []) + list(layer.get("Outputs", []) or [])
    return any(isinstance(t, Mapping) and _get(t, "DataType") is not None for t in tensors)


def _get(obj: Mapping, key: str):
    # TensorRT's spelling varies between releases ("DataType" / "Datatype"): match case-insensitively.
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


def _tensor(raw: Mapping) -> EngineTensor:
    name = str(raw.get("Name", ""))
    combined = _get(raw, "Format/Datatype")
    if combined is not None:
        return EngineTensor(name, canonical_dtype(combined), str(combined))
    dtype = _get(raw, "DataType")
    fmt = str(_get(raw, "Format") or "")
    if dtype is not None:
        return EngineTensor(name, canonical_dtype(dtype), str(dtype), fmt)
    # No type field: the format text usually still names the type ("Row major linear FP16").
    return EngineTensor(name, canonical_dtype(fmt), fmt, fmt)


def _io_tensors(doc: Mapping) -> list[dict]:
    if isinstance(doc.get("I/O Tensors"), list):
        out = []
        for t in doc["I/O Tensors"]:
            if isinstance(t, Mapping):
                dtype = _get(t, "DataType")
                out.append({"name": str(t.get("Name", "")), "mode": str(t.get("IOMode", "")), "dtype": canonical_dtype(dtype) if dtype else ""})
            else:
                out.append({"name": str(t), "mode": "", "dtype": ""})
        return out
    if isinstance(doc.get("Bindings"), list):
        return [{"name": str(b), "mode": "", "dtype": ""} for b in doc["Bindings"]]
    return []


@dataclass
class PrecisionCheck:
    """Outcome of :func:`check_fp32_nodes`.

    Attributes:
        violations: offending tensors: ``{"node", "layer", "tensor", "role", "dtype"}``.
        checked: plan node -> names of the engine layers checked for it.
        partial: plan node -> fused layers it shares with non-plan nodes; only the tensors that
            belong to the plan node could be checked there (the inside of a fusion is invisible).
        absent: plan nodes with no engine layer (folded away as constants or no-ops, or fused
            under a name and metadata that do not mention them).
    """

    violations: list[dict] = field(default_factory=list)
    checked: dict[str, list[str]] = field(default_factory=dict)
    partial: dict[str, list[str]] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "violations": self.violations,
            "checked": self.checked,
            "partial": self.partial,
            "absent": self.absent,
        }

    def summary(self, limit: int = 5) -> str:
        """One line: which plan nodes run in which precision (first ``limit`` listed)."""
        if self.passed:
            return f"all {len(self.checked)} plan nodes found in the engine run in FP32"
        nodes = sorted({v["node"] for v in self.violations})
        shown = [
            f"{v['node']} (layer '{v['layer']}', {v['role']} '{v['tensor']}' is {v['dtype']})"
            for v in _first_per_node(self.violations)[:limit]
        ]
        more = f" and {len(nodes) - limit} more" if len(nodes) > limit else ""
        return f"{len(nodes)} FP32 plan node(s) do not run in FP32 in the engine: " + "; ".join(shown) + more


def _first_per_node(violations: list[dict]) -> list[dict]:
    seen, out = set(), []
    for v in violations:
        if v["node"] not in seen:
            seen.add(v["node"])
            out.append(v)
    return out


def check_fp32_nodes(info: EngineInfo, plan_nodes: Sequence[str], nodes: Mapping[str, NodeDesc], initializers=()) -> PrecisionCheck:
    """List the engine layers of FP32 plan nodes whose float tensors are not FP32.

    A layer that comes only from plan nodes must have every float input and output in FP32. A
    layer fused from plan and non-plan nodes (e.g. a border Cast fused into its consumer) is
    checked on the tensors that belong to plan nodes: outputs a plan node produces, and inputs
    that only plan nodes of the layer read.

    Args:
        info: :func:`parse_engine_info` of the engine.
        plan_nodes: names of the nodes the plan keeps in FP32.
        nodes: :func:`fp16guard.backends.tensorrt.mapping.node_table` of the model the engine was built from.
        initializers: initializer names of that model.

    Raises:
        InspectorFormatError: the document has no per-layer types (verbosity below DETAILED).
    """
    if info.schema == "names-only":
        raise InspectorFormatError(
            "engine inspector JSON lists layer names only; the engine must be built with DETAILED profiling verbosity to check precisions"
        )
    plan = set(plan_nodes)
    mapping = map_layers([l.describe() for l in info.layers], nodes, initializers)
    result = PrecisionCheck()
    for layer in info.layers:
        origins = mapping.layer_nodes.get(layer.index, frozenset())
        mine = sorted(origins & plan)
        if not mine:
            continue
        pure = origins <= plan
        produced = {out: n for n in mine for out in nodes[n].outputs}
        for node in mine:
            result.checked.setdefault(node, []).append(layer.name)
            if not pure:
                result.partial.setdefault(node, []).append(layer.name)
        others = origins - plan
        for tensor in layer.outputs:
            if tensor.dtype not in FLOAT_DTYPES or tensor.dtype == "fp32":
                continue
            if pure or tensor.name in produced:
                owner = produced.get(tensor.name, mine[0])
                result.violations.append(_violation(owner, layer, tensor, "output"))
        for tensor in layer.inputs:
            if tensor.dtype not in FLOAT_DTYPES or tensor.dtype == "fp32":
                continue
            readers = [n for n in mine if tensor.name in nodes[n].inputs]
            foreign = any(tensor.name in nodes[n].inputs for n in others if n in nodes)
            if pure or (readers and not foreign):
                result.violations.append(_violation(readers[0] if readers else mine[0], layer, tensor, "input"))
    result.absent = sorted(n for n in plan if n not in result.checked)
    return result


def _violation(node: str, layer: EngineLayer, tensor: EngineTensor, role: str) -> dict:
    return {"node": node, "layer": layer.name, "tensor": tensor.name, "role": role, "dtype": tensor.dtype, "raw": tensor.raw}
