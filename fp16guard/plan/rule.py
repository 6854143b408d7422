"""The seam of the planner: what a plan rule is, and what it may read.

A **rule** looks at one node of the main graph and says why it must stay FP32, as a list of
:class:`Finding` (empty: the rule has nothing against FP16). :func:`fp16guard.plan.planner.make_plan`
asks every rule of :data:`fp16guard.plan.rules.DEFAULT_RULES` about every node that touches a
FLOAT tensor, in that order, and keeps a node FP32 when any rule found something.

Adding a rule is one module plus one line:

1. Write ``fp16guard/plan/rules/<name>.py`` with a class that satisfies :class:`Rule`::

       class MyRule:
           codes = ("my_code",)          # reason codes it owns, most important first
           structural = False            # True: force_fp16_nodes cannot override it

           def findings(self, node, ctx):
               out = []
               for name in ctx.float_inputs(node):
                   s = ctx.stats(name)
                   if s is not None and s.get("my_column", 0) > 0:
                       out.append(Finding("my_code", f"input {name!r} has ...", (name,)))
               return out

2. Add an instance to ``DEFAULT_RULES`` in ``fp16guard/plan/rules/__init__.py``; its position
   sets the priority of its codes (the node's primary ``reason`` is the first code, in the order
   of the rules' ``codes``, that any rule found). Write one test with a tiny model built in code.

Contract:

* Rules are stateless and pure: they read the model and statistics through :class:`PlanContext`
  and never edit them. Anything expensive (reading initializer values) is cached on the context,
  so several rules can ask for it at the cost of one scan.
* A rule may emit a code owned by another rule (e.g. ``no_statistics`` for an unreadable
  initializer); the priority is the owner's.
* ``Finding.tensors`` names the tensors that made the rule fire (inputs, outputs, initializers):
  the report colours them and the plan records them as the entry's ``triggers``.
* The sentence says what was seen, with numbers (``input 'x' has max |x| = 7e+04 > threshold 1e+04``).
* Statistics columns beyond ``max_abs`` and ``nonfinite`` (whatever ``stats.parquet`` carries)
  are available through :meth:`TensorStats.get`; a rule needing a column that an older table lacks
  must treat it as unknown, not as zero.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import onnx
import pyarrow as pa

from fp16guard.errors import DataError
from fp16guard.graph.info import Fp16Slots, TypeInfo, fp16_slots, opset_map, outer_refs, tensor_types
from fp16guard.io.model import FLOAT_TYPES
from fp16guard.plan.values import ValueSummary, constant_value, summarize_tensor
from fp16guard.settings import PlanSettings

__all__ = ["Finding", "TensorStats", "PlanContext", "Rule", "REQUIRED_COLUMNS", "CONSTANT_OPS", "describe_range", "out_of_range"]

#: Columns every statistics table must have for planning.
REQUIRED_COLUMNS = ("tensor", "max_abs", "nonfinite")
#: Ops whose float output is a value stored in an attribute.
CONSTANT_OPS = ("Constant", "ConstantOfShape")


@dataclass(frozen=True)
class Finding:
    """One reason for a node to stay FP32.

    Attributes:
        code: the reason code (e.g. ``input_above_threshold``).
        sentence: what was seen, for people (``plan.json`` ``details``).
        tensors: names of the tensors that triggered it (may be empty, e.g. a forced op type).
    """

    code: str
    sentence: str
    tensors: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorStats:
    """The reduced statistics of one tensor (one row of ``stats.parquet``).

    Attributes:
        name: tensor name.
        max_abs: largest |x| over calibration (NaN when unknown or NaN was seen).
        nonfinite: NaN/inf elements seen.
        columns: every column of the row, including ones added after this class was written.
    """

    name: str
    max_abs: float
    nonfinite: int
    columns: Mapping[str, Any] = field(default_factory=dict)

    def get(self, column: str, default: Any = None) -> Any:
        """Value of any statistics column for this tensor; ``default`` when absent or null."""
        value = self.columns.get(column)
        return default if value is None else value


@runtime_checkable
class Rule(Protocol):
    """A plan rule (see the module docstring for the contract and how to add one).

    Attributes:
        codes: reason codes this rule owns, most important first.
        structural: True when ``force_fp16_nodes`` cannot override it (the node cannot be
            built in FP16 at all).
    """

    codes: tuple[str, ...]
    structural: bool

    def findings(self, node: onnx.NodeProto, ctx: "PlanContext") -> list[Finding]:
        """Why ``node`` must stay FP32 (empty when this rule has nothing against FP16)."""
        ...


class PlanContext:
    """Everything a rule may read about the model, its statistics and the settings.

    Built once per :func:`~fp16guard.plan.planner.make_plan` call. Values of initializers and
    Constant nodes are summarised on first use and cached (one scan per tensor, in chunks).

    Attributes:
        model: the FP32 model (weights may be external and not loaded).
        settings: the plan settings (threshold, user overrides).
        threshold: ``settings.threshold`` as a float.
        types: element types of every main-graph value.
        opsets: ``{domain: version}`` of the model.
        weights_dir: folder to read external-data initializers from (None: unreadable).
        graph_inputs: names of the graph inputs.
        initializers: float initializers that are not graph inputs, by name.
        constants: Constant/ConstantOfShape nodes by the name of their output.
        producers: every main-graph node by the name of each of its outputs.
        columns: the statistics table's column names.
    """

    def __init__(self, model: onnx.ModelProto, stats: pa.Table, settings: PlanSettings, weights_dir: str | os.PathLike | None = None):
        """Index the model and the statistics.

        Raises:
            DataError: the statistics table lacks one of :data:`REQUIRED_COLUMNS`.
        """
        missing = [c for c in REQUIRED_COLUMNS if c not in stats.column_names]
        if missing:
            raise DataError(f"statistics table has columns {stats.column_names}; expected at least {list(REQUIRED_COLUMNS)}")
        self.model = model
        self.settings = settings
        self.threshold = float(settings.threshold)
        self.types: TypeInfo = tensor_types(model)
        self.opsets = opset_map(model)
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        graph = model.graph
        self.graph_inputs = {v.name for v in graph.input}
        self.initializers = {t.name: t for t in graph.initializer if t.name not in self.graph_inputs and t.data_type in FLOAT_TYPES}
        self.constants = {o: n for n in graph.node if n.op_type in CONSTANT_OPS for o in n.output if o}
        self.producers = {o: n for n in graph.node for o in n.output if o}
        self.columns = list(stats.column_names)
        self._stats = {row["tensor"]: row for row in stats.to_pylist()}
        self._values: dict[str, ValueSummary | None] = {}
        self._slots: dict[int, Fp16Slots] = {}
        self._regex: dict[str, re.Pattern] = {}
        self._memo: dict[tuple, Any] = {}

    def stats(self, name: str) -> TensorStats | None:
        """The statistics row of tensor ``name``; None when it was not measured."""
        row = self._stats.get(name)
        if row is None:
            return None
        max_abs = row.get("max_abs")
        return TensorStats(name, float("nan") if max_abs is None else float(max_abs), int(row.get("nonfinite") or 0), row)

    def slots(self, node: onnx.NodeProto) -> Fp16Slots:
        """:func:`fp16guard.graph.info.fp16_slots` of ``node`` (cached)."""
        key = id(node)
        if key not in self._slots:
            self._slots[key] = fp16_slots(node, self.opsets, self.types)
        return self._slots[key]

    def inputs(self, node: onnx.NodeProto) -> list[str]:
        """The node's inputs, then what its subgraphs read from outside, without duplicates."""
        names = [n for n in node.input if n] + [n for n in outer_refs(node) if n not in node.input]
        return list(dict.fromkeys(names))

    def initializer_values(self, name: str) -> ValueSummary | None:
        """Summary of float initializer ``name``; None when its external data cannot be read.

        Raises:
            KeyError: ``name`` is not in :attr:`initializers`.
        """
        key = "init:" + name
        if key not in self._values:
            self._values[key] = summarize_tensor(self.initializers[name], self.weights_dir)
        return self._values[key]

    def constant_values(self, output: str) -> ValueSummary | None:
        """Summary of the float value that Constant/ConstantOfShape output ``output`` holds.

        None when the value is not float or absent. Raises KeyError when ``output`` is not in
        :attr:`constants`.
        """
        key = "const:" + output
        if key not in self._values:
            self._values[key] = constant_value(self.constants[output])
        return self._values[key]

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` for this plan (rules share results across nodes).

        Keys should start with the rule's module name to stay apart from other rules' keys.
        """
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def regex(self, pattern: str) -> re.Pattern:
        """``re.compile(pattern)``, cached."""
        if pattern not in self._regex:
            self._regex[pattern] = re.compile(pattern)
        return self._regex[pattern]


def describe_range(stats: TensorStats) -> str:
    """``max |x| = 7e+04`` (and the non-finite count when there are any)."""
    text = f"max |x| = {stats.max_abs:.6g}"
    return text + (f" and {stats.nonfinite} non-finite values" if stats.nonfinite else "")


def out_of_range(stats: TensorStats, threshold: float) -> bool:
    """True when the tensor saw non-finite values, a NaN maximum, or max |x| above ``threshold``."""
    return stats.nonfinite > 0 or math.isnan(stats.max_abs) or stats.max_abs > threshold
