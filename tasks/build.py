"""Build tasks: the mixed-precision ONNX model, then the chosen backend's artifact."""

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


@task(name="build-backend-artifact", tags=["fp16guard-gpu"])
def build_backend_task(
    backend: str,
    providers: list[str],
    model_path: str,
    mixed_path: str,
    plan: dict,
    out_dir: str,
    shards: list,
    options: dict,
    batch_size: int | None = None,
) -> dict:
    """Build the artifact of backend ``backend`` (registry name) in ``out_dir``; see
    :meth:`fp16guard.backends.base.Backend.build`. For onnxruntime the artifact is
    ``model.mixed.onnx`` itself; TensorRT builds ``model.engine`` (its optimisation profile
    covers every input shape the ``shards`` feed; ``options`` carry its mode, workspace and
    timing-cache folder).

    Returns:
        The backend's lineage record (``name``, ``implementation``, ``artifact``,
        ``artifact_sha256``, backend specifics).

    Raises:
        VerificationFailed: the TensorRT engine ignores the plan's FP32 constraints.
    """
    from fp16guard.backends.base import BuildRequest
    from fp16guard.backends.registry import get_backend

    request = BuildRequest(model_path, mixed_path, plan, out_dir, list(shards), batch_size, dict(options))
    return get_backend(backend, providers).build(request)
