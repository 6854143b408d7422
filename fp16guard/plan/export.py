"""Export a plan as TensorRT ≤10 command-line flags (trtexec, Polygraphy).

TensorRT 11 builds the mixed-precision ONNX model as it is (strong typing: the FP16 tensors and
FP32 islands are in the graph). TensorRT 8.6–10.x users with weak typing instead build with the
FP16 flag and pin layers to FP32; these functions spell that out for a run's plan:

* ``trtexec --onnx=<artifact> --fp16 --precisionConstraints=obey
  --layerPrecisions=<node>:fp32,... --layerOutputTypes=<node>:fp32,...`` — one type per output,
  joined with ``+`` for a multi-output layer (``<topk>:fp32+int32``);
* ``polygraphy convert <artifact> --fp16 --precision-constraints obey --layer-precisions
  <node>:float32 ... -o model.engine`` (and the same flags for ``polygraphy run --trt``).
  Polygraphy has no per-layer output-type flag: its layer precisions are what it can pin.

The command points at the run's artifact (``model.mixed.onnx``), not the original model: a
folded plan's scales live in the artifact's weights and its restore nodes exist only there.
TensorRT names layers after ONNX nodes (docs: the layer/node mapping), which is what the flags
name; a node name containing ``,`` or ``:`` cannot be written in these flags and is reported in
:attr:`Export.unnamed` (pin it with a network script, or use TensorRT's strong typing).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Mapping

import onnx
from onnx import TensorProto

from fp16guard.errors import ConfigError

__all__ = ["FORMATS", "Export", "export_plan"]

#: The export formats ``fp16guard show --as`` accepts.
FORMATS = ("trtexec", "polygraphy")

#: ONNX element type -> trtexec type name (``--layerOutputTypes``).
_TRTEXEC_TYPES = {
    TensorProto.FLOAT: "fp32",
    TensorProto.FLOAT16: "fp16",
    TensorProto.BFLOAT16: "bf16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.BOOL: "bool",
}
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class Export:
    """An exported command.

    Attributes:
        format: ``trtexec`` or ``polygraphy``.
        argv: the command as a list of arguments (for ``subprocess``).
        run_argv: for Polygraphy, the same constraints as a ``polygraphy run --trt`` command
            (build and run in one step); empty for trtexec.
        unnamed: plan nodes whose names cannot be written in the flags (contain ``,`` or ``:``).
    """

    format: str
    argv: tuple[str, ...]
    run_argv: tuple[str, ...] = ()
    unnamed: tuple[str, ...] = field(default=())

    @property
    def command(self) -> str:
        """The command as one shell line (arguments quoted where needed)."""
        return " ".join(shlex.quote(a) for a in self.argv)

    @property
    def run_command(self) -> str:
        """:attr:`run_argv` as one shell line ('' for trtexec)."""
        return " ".join(shlex.quote(a) for a in self.run_argv)


def _output_types(entry: Mapping, types: Mapping[str, int]) -> list[str]:
    """trtexec types of a plan node's outputs: FP32 for float outputs, the own type otherwise."""
    out = []
    for name in entry.get("outputs") or []:
        elem = types.get(name, TensorProto.FLOAT)
        out.append("fp32" if elem in _FLOATS else _TRTEXEC_TYPES.get(elem, "fp32"))
    return out


def export_plan(plan: Mapping, artifact: str, fmt: str, model: onnx.ModelProto | None = None, engine: str = "model.engine") -> Export:
    """The TensorRT ≤10 command that builds ``artifact`` with ``plan``'s FP32 nodes pinned.

    Args:
        plan: ``plan.json``'s content (needs ``fp32_nodes`` entries with ``name`` and ``outputs``).
        artifact: path or URL of the run's ``model.mixed.onnx``.
        fmt: one of :data:`FORMATS`.
        model: the artifact's graph, to type each output (default None: every output FP32, as
            the plan's FP32 nodes mostly have float outputs).
        engine: where the command saves the engine (default ``model.engine``).

    Raises:
        ConfigError: unknown format, or a plan without an ``fp32_nodes`` list.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not known; expected one of {list(FORMATS)}")
    entries = plan.get("fp32_nodes") if isinstance(plan, Mapping) else None
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in entries):
        raise ConfigError("plan has no 'fp32_nodes' list of {'name': ...} entries; expected the content of plan.json")
    types: dict[str, int] = {}
    if model is not None:
        from fp16guard.graph.info import tensor_types

        types = tensor_types(model).elem
        present = {n.name for n in model.graph.node}
        missing = [e["name"] for e in entries if e["name"] not in present]
        if missing:
            raise ConfigError(f"plan names nodes {missing[:5]} that the artifact does not have; expected the plan of this artifact's run")
    named = [e for e in entries if "," not in e["name"] and ":" not in e["name"]]
    unnamed = tuple(e["name"] for e in entries if e not in named)
    if fmt == "trtexec":
        argv = ["trtexec", f"--onnx={artifact}", "--fp16"]
        if named:
            argv.append("--precisionConstraints=obey")
            argv.append("--layerPrecisions=" + ",".join(f"{e['name']}:fp32" for e in named))
            typed = [(e["name"], _output_types(e, types)) for e in named]
            typed = [(n, t) for n, t in typed if t]
            if typed:
                argv.append("--layerOutputTypes=" + ",".join(f"{n}:{'+'.join(t)}" for n, t in typed))
        argv.append(f"--saveEngine={engine}")
        return Export(fmt, tuple(argv), (), unnamed)
    flags = ["--fp16"]
    if named:
        flags += ["--precision-constraints", "obey", "--layer-precisions"] + [f"{e['name']}:float32" for e in named]
    argv = ["polygraphy", "convert", artifact, *flags, "-o", engine]
    return Export(fmt, tuple(argv), ("polygraphy", "run", artifact, "--trt", *flags), unnamed)
