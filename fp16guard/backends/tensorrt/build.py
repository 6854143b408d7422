"""Build ``model.engine`` from a plan: strongly typed (11.x, opt-in 10.12+) or weakly typed (8.6-10.x).

* **Strong typing** parses ``model.mixed.onnx`` with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``:
  the FP16 tensors and the FP32 islands with their border Casts come from the graph.
* **Weak typing** parses the FP32 model, sets the FP16 builder flag and
  ``OBEY_PRECISION_CONSTRAINTS``, and pins **every** layer of every plan node to FP32 — its
  precision and the type of each float output, not only output 0 (:mod:`.mapping`, docs/FACTS.md #9).

Either way the engine is built with DETAILED profiling verbosity, checked with the engine
inspector (:mod:`.inspector`; TensorRT may ignore constraints it has no kernel for), and only
then written. Polygraphy's TensorRT loaders do the parsing, configuration and building.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fp16guard.io import atomic
from fp16guard.backends.tensorrt.choose import choose_mode
from fp16guard.backends.tensorrt.env import cache_key, gpu_name, require_tensorrt
from fp16guard.backends.tensorrt.errors import EngineBuildError, EnginePrecisionError
from fp16guard.backends.tensorrt.inspector import check_fp32_nodes, parse_engine_info
from fp16guard.backends.tensorrt.mapping import describe_network, map_layers, node_table
from fp16guard.backends.tensorrt.profiles import derive_profile, is_dynamic
from fp16guard.errors import ConfigError
from fp16guard.io.hashing import sha256_file
from fp16guard.io.model import input_specs, load_model

ENGINE_NAME = "model.engine"
INSPECT_NAME = "model.engine.inspect.json"
REJECTED_INSPECT_NAME = "model.engine.rejected.inspect.json"
#: Default builder workspace limit: 4 GiB (TensorRT's default is the whole device memory).
DEFAULT_WORKSPACE_BYTES = 4 << 30


def plan_fp32_nodes(plan: Mapping) -> list[str]:
    """Names of the nodes a ``plan.json`` dict keeps in FP32.

    Raises:
        ConfigError: the dict has no ``fp32_nodes`` list of ``{"name": ...}`` entries.
    """
    entries = plan.get("fp32_nodes") if isinstance(plan, Mapping) else None
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) and isinstance(e.get("name"), str) for e in entries):
        raise ConfigError("plan has no 'fp32_nodes' list of {'name': ...} entries; expected the content of plan.json")
    return [e["name"] for e in entries]


def pin_fp32(trt, network, plan_nodes: Sequence[str], nodes, initializers=()) -> dict:
    """Weak typing: keep every TensorRT layer of every plan node in FP32 (edits ``network``).

    For each attributed layer with at least one float output: ``layer.precision = float32`` and
    ``set_output_type(i, float32)`` for every float output ``i``. Shape layers and layers with
    only integer/bool outputs are left alone (they do no float arithmetic).

    Returns:
        ``{"pinned": {node: [layer names]}, "unmapped": [plan nodes with no float layer],
        "evidence": {layer name: rule}}``.
    """
    layers = describe_network(network)
    mapping = map_layers(layers, nodes, initializers)
    floats = {trt.float32, trt.float16}
    if hasattr(trt, "bfloat16"):
        floats.add(trt.bfloat16)
    shape_type = getattr(trt.LayerType, "SHAPE", None)
    pinned: dict[str, list[str]] = {}
    evidence: dict[str, str] = {}
    for node in plan_nodes:
        for index in mapping.layers_of(node):
            layer = network.get_layer(index)
            if shape_type is not None and layer.type == shape_type:
                continue
            outs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
            if not outs:
                continue
            layer.precision = trt.float32
            for j in outs:
                layer.set_output_type(j, trt.float32)
            pinned.setdefault(node, []).append(layer.name)
            evidence[layer.name] = mapping.evidence.get(index, "")
    return {"pinned": pinned, "unmapped": [n for n in plan_nodes if n not in pinned], "evidence": evidence}


def build_engine(
    model_path: str | os.PathLike,
    mixed_model_path: str | os.PathLike | None,
    plan: Mapping,
    out_dir: str | os.PathLike,
    shapes: Iterable[Mapping[str, Sequence[int]]] = (),
    mode: str = "auto",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Build, check and write a TensorRT engine with the plan's nodes in FP32.

    Side effects: writes ``<out_dir>/model.engine`` and ``<out_dir>/model.engine.inspect.json``
    (each atomically; the inspector JSON first, so an engine never lacks it); reads and rewrites
    ``<timing_cache_dir>/<gpu>__trt-<version>.cache`` when a folder is given. When the check
    fails, writes only ``<out_dir>/model.engine.rejected.inspect.json`` and raises.

    Args:
        model_path: the FP32 model (parsed for weak typing).
        mixed_model_path: ``model.mixed.onnx`` (parsed for strong typing; may be None when
            only weak typing is possible or asked for).
        plan: the content of ``plan.json`` (``fp32_nodes`` is used).
        out_dir: folder for the engine and its inspector JSON (created if missing).
        shapes: input shapes as they will be fed (one mapping per inference call, from the
            calibration and holdout shards: :func:`.profiles.observed_shapes`); required when the
            model has dynamic dimensions.
        mode: "auto" (default), "strong" or "weak" (:func:`.choose.choose_mode`).
        workspace_bytes: builder workspace limit in bytes (default 4 GiB).
        timing_cache_dir: folder of timing caches keyed by GPU and TensorRT version; None: no cache.

    Returns:
        A JSON-serialisable record for the lineage: TensorRT version, typing mode and why, GPU,
        optimisation profile, pinned layers (weak), precision check, timing cache use, files
        with sha256, build time in seconds.

    Raises:
        TensorRTUnavailable: no tensorrt module or no GPU.
        TypingModeError: the mode does not exist in the installed TensorRT.
        ConfigError: bad plan, workspace, or missing mixed model for strong typing.
        DataError: dynamic inputs without observed shapes.
        EngineBuildError: TensorRT could not parse or build.
        EnginePrecisionError: plan nodes do not run in FP32 in the built engine.
    """
    if not isinstance(workspace_bytes, int) or workspace_bytes < (1 << 20):
        raise ConfigError(f"workspace limit {workspace_bytes!r} bytes is too small; expected an integer of at least 1 MiB")
    plan_nodes = plan_fp32_nodes(plan)
    trt = require_tensorrt()
    gpu = gpu_name()
    choice = choose_mode(trt.__version__, mode)
    if choice.mode == "strong" and mixed_model_path is None:
        raise ConfigError("strongly typed TensorRT builds need model.mixed.onnx; none was given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = Path(mixed_model_path if choice.mode == "strong" else model_path)

    with tempfile.TemporaryDirectory(prefix=".trt-build-", dir=out_dir) as tmp:
        if choice.mode == "weak" and isinstance(plan, Mapping) and plan.get("folding"):
            # A folded plan is for the folded FP32 model (scales in the weights, restoring Muls):
            # weak typing parses that model, replayed from the plan, not the original file.
            source = _folded_source(source, plan, Path(tmp))
        # Recorded now: a folded source lives in ``tmp`` only (its digest names what was parsed).
        source_record = {"path": str(source), "sha256": sha256_file(source)}
        parse_path, model = _normalised_source(source, Path(tmp))
        nodes = node_table(model)
        inits = {t.name for t in model.graph.initializer}
        missing = [n for n in plan_nodes if n not in nodes]
        if missing:
            raise ConfigError(f"plan names node(s) {missing[:5]} that {source.name} does not have; expected the plan made for this model")
        specs = input_specs(model)
        shapes = list(shapes)
        profile = derive_profile(specs, shapes) if (is_dynamic(specs) or shapes) else {}
        cache_path = None
        if timing_cache_dir is not None:
            cache_path = Path(timing_cache_dir) / f"{cache_key(gpu, trt.__version__)}.cache"
        started = time.monotonic()
        engine_bytes, pin_record, cache_record = _build(trt, parse_path, choice.mode, plan_nodes, nodes, inits, specs, profile, workspace_bytes, cache_path)
        build_seconds = round(time.monotonic() - started, 3)

    info_text = _inspect(trt, engine_bytes)
    try:
        files, check, info = check_and_write(engine_bytes, info_text, plan_nodes, nodes, inits, out_dir)
    except EnginePrecisionError as exc:
        exc.report["typing"] = choice.to_dict()
        raise
    return {
        "backend": "tensorrt",
        "tensorrt_version": trt.__version__,
        "typing": choice.to_dict(),
        "gpu": gpu,
        "source_model": source_record,
        "fp32_nodes": len(plan_nodes),
        "profile": profile,
        "workspace_bytes": workspace_bytes,
        "profiling_verbosity": "DETAILED",
        # Polygraphy's CreateConfig clears TF32: FP32 islands compute in true FP32, not TF32.
        "tf32": False,
        "timing_cache": cache_record,
        "pinning": pin_record,
        "inspector_schema": info.schema,
        "precision_check": check.to_dict(),
        "build_seconds": build_seconds,
        "files": files,
    }


def check_and_write(engine_bytes: bytes, inspector_json: str, plan_nodes: Sequence[str], nodes, initializers, out_dir) -> tuple[dict, "object", "object"]:
    """Check an engine's inspector JSON against the plan; write the engine only if it passes.

    Side effects: on success writes ``<out_dir>/model.engine.inspect.json`` then
    ``<out_dir>/model.engine`` (each atomically); on failure writes only
    ``<out_dir>/model.engine.rejected.inspect.json``.

    Args:
        engine_bytes: the serialized engine.
        inspector_json: ``get_engine_information(JSON)`` of that engine (10.x or 11.x schema).
        plan_nodes: names of the FP32 plan nodes.
        nodes: :func:`.mapping.node_table` of the model the engine was built from.
        initializers: that model's initializer names.
        out_dir: destination folder.

    Returns:
        ``(files, check, info)``: files = ``{"engine": {path, sha256, bytes}, "inspector": {...}}``,
        the :class:`.inspector.PrecisionCheck` and the parsed :class:`.inspector.EngineInfo`.

    Raises:
        EnginePrecisionError: a plan node's layer runs in another precision, or the JSON has no
            per-layer types (the engine was not built with DETAILED verbosity).
    """
    from fp16guard.backends.tensorrt.inspector import InspectorFormatError

    out_dir = Path(out_dir)
    info = parse_engine_info(inspector_json)
    pretty = json.dumps(json.loads(inspector_json), indent=2) + "\n"
    try:
        check = check_fp32_nodes(info, plan_nodes, nodes, initializers)
    except InspectorFormatError as exc:
        rejected = atomic.write_text(out_dir / REJECTED_INSPECT_NAME, pretty)
        raise EnginePrecisionError(f"cannot check the engine's precisions: {exc}; engine not written, inspector JSON in {rejected}") from None
    if not check.passed:
        rejected = atomic.write_text(out_dir / REJECTED_INSPECT_NAME, pretty)
        raise EnginePrecisionError(
            f"{check.summary()}; engine not written, inspector JSON in {rejected}",
            violations=check.violations,
            report={"precision_check": check.to_dict()},
        )
    inspect_path = atomic.write_text(out_dir / INSPECT_NAME, pretty)
    engine_path = atomic.write_bytes(out_dir / ENGINE_NAME, bytes(engine_bytes))
    (out_dir / REJECTED_INSPECT_NAME).unlink(missing_ok=True)  # a stale rejection would mislead
    files = {
        "engine": {"path": str(engine_path), "sha256": sha256_file(engine_path), "bytes": engine_path.stat().st_size},
        "inspector": {"path": str(inspect_path), "sha256": sha256_file(inspect_path), "bytes": inspect_path.stat().st_size},
    }
    return files, check, info


def _folded_source(path: Path, plan: Mapping, tmp: Path) -> Path:
    """Write the FP32 model a folded plan is for (:func:`model_for_plan`) to ``tmp``; its path."""
    import onnx

    from fp16guard.plan.strategies import model_for_plan

    folded = model_for_plan(load_model(path), plan)
    copy = tmp / f"folded.{path.name}"
    large = folded.ByteSize() > (1 << 31) - 1 - (1 << 20)
    onnx.save(folded, str(copy), save_as_external_data=large, location=f"{copy.name}.data" if large else None)
    return copy


def _normalised_source(path: Path, tmp: Path):
    """The file TensorRT should parse, and the normalised model whose node names it will see.

    :func:`load_model` names unnamed nodes; the plan uses those names, so when the file lacks
    them a normalised copy is written to ``tmp`` (external data kept beside it) and parsed instead.
    """
    import onnx

    model = load_model(path)
    raw = onnx.load(str(path), load_external_data=False)
    if [n.name for n in raw.graph.node] == [n.name for n in model.graph.node]:
        return path, model
    copy = tmp / path.name
    large = model.ByteSize() > (1 << 31) - 1 - (1 << 20)
    onnx.save(model, str(copy), save_as_external_data=large, location=f"{path.name}.data" if large else None)
    return copy, model


def _build(trt, parse_path, typing, plan_nodes, nodes, inits, specs, profile, workspace_bytes, cache_path):
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessNetwork, Profile
    from polygraphy.exception import PolygraphyException

    strong = typing == "strong"
    network = NetworkFromOnnxPath(str(parse_path), strongly_typed=strong)
    pin_record: dict = {}
    if not strong:

        def pin(network):
            pin_record.update(pin_fp32(trt, network, plan_nodes, nodes, inits))

        network = PostprocessNetwork(network, func=pin, name="fp16guard-pin-fp32")

    profiles = None
    dynamic = {s.name for s in specs if s.shape is None or any(not (isinstance(d, int) and d > 0) for d in s.shape)}
    if dynamic:
        p = Profile()
        for name in dynamic:
            p.add(name, min=profile[name]["min"], opt=profile[name]["opt"], max=profile[name]["max"])
        profiles = [p]
    create = CreateConfig(
        fp16=not strong,
        precision_constraints=None if strong else "obey",
        profiles=profiles,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_bytes},
    )
    cache_record = {"path": str(cache_path) if cache_path else None, "loaded_bytes": 0, "saved_bytes": 0, "accepted": None}
    cached = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    captured = {}

    def make_config(builder, network):
        config = create(builder, network)
        if cached:
            # Our own load (not CreateConfig's load_timing_cache) so the rewrite below is atomic.
            cache = config.create_timing_cache(cached)
            accepted = bool(config.set_timing_cache(cache, ignore_mismatch=False))
            cache_record.update(loaded_bytes=len(cached), accepted=accepted)
        captured["config"] = config
        return config

    try:
        engine_bytes = EngineBytesFromNetwork(network, config=make_config)()
    except PolygraphyException as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise EngineBuildError(f"TensorRT could not build {parse_path.name} ({'strongly' if strong else 'weakly'} typed): {first}") from None
    if cache_path is not None and "config" in captured:
        serialized = captured["config"].get_timing_cache().serialize()
        data = bytes(serialized)
        atomic.write_bytes(cache_path, data)
        cache_record["saved_bytes"] = len(data)
    return engine_bytes, pin_record, cache_record


def _inspect(trt, engine_bytes) -> str:
    """Engine inspector JSON of a serialized engine (DETAILED verbosity was set at build)."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(bytes(engine_bytes))
    if engine is None:
        raise EngineBuildError("TensorRT built an engine it cannot deserialize")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
