"""Build tasks: the mixed-precision ONNX model (and the TensorRT engine when asked)."""

from __future__ import annotations

from pathlib import Path

from prefect import task



@task(name="build-mixed-onnx")
def build_mixed_onnx_task(model_path: str, plan: dict, out_dir: str) -> dict:
    """Write ``model.mixed.onnx``: FP16 everywhere but the plan's FP32 nodes.

    Side effects:
        Writes ``<out_dir>/model.mixed.onnx`` atomically (external data beside it when the
        model exceeds protobuf's 2 GB limit).

    Returns:
        ``{"path", "sha256"}`` of the artifact.
    """
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import load_model, model_digest, save_model
    from fp16guard.plan.strategies import model_for_plan

    fp32 = {n["name"] for n in plan["fp32_nodes"]}
    # A folded plan is for the folded model: replay its recorded passes, so the weights carry the scales.
    model = model_for_plan(load_model(model_path), plan)
    target = save_model(to_mixed_precision(model, fp32), Path(out_dir) / "model.mixed.onnx")
    return {"path": str(target), "sha256": model_digest(target)}


@task(name="build-tensorrt-engine", tags=["fp16guard-gpu"])
def build_engine_task(
    model_path: str,
    mixed_path: str,
    plan: dict,
    out_dir: str,
    shards: list,
    mode: str,
    workspace_mib: int,
    timing_cache_dir: str,
    batch_size: int | None = None,
) -> dict:
    """Build ``model.engine`` (and its inspector JSON) with TensorRT; see
    :func:`fp16guard.backends.tensorrt.build.build_engine`.

    The optimisation profile covers every input shape that calibration and holdout shards
    (``shards``: ShardRefs) will feed; the timing cache lives in ``timing_cache_dir`` (in the
    store's cache), keyed by GPU and TensorRT version.

    Returns:
        The backend's lineage record (TensorRT version, typing mode and why, profile, files, hashes).
    """
    from fp16guard.backends.tensorrt import build_engine
    from fp16guard.backends.tensorrt.profiles import observed_shapes
    from fp16guard.io.model import input_specs, load_graph

    shapes = observed_shapes(shards, input_specs(load_graph(model_path)), batch_size)
    record = build_engine(
        model_path, mixed_path, plan, out_dir, shapes,
        mode=mode, workspace_bytes=workspace_mib << 20, timing_cache_dir=timing_cache_dir,
    )
    return {"name": "tensorrt", **record}
