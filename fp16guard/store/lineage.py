"""The run manifest: what went in, what came out, who computed what, with which code.

``manifest.json`` is the lineage record of one run (issue 3): sha256 and location of the model and
of every calibration and holdout shard, which flow run computed each shard's statistics (a cached
shard names the run that really computed it), the flow run, deployment and trigger, the
parameters, package versions and the device, and the sha256 of every output file. Hashes of the
outputs let ``verify-store`` prove months later that nothing was altered.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from fp16guard.io.hashing import sha256_file

#: Bumped when the manifest's shape changes incompatibly.
MANIFEST_SCHEMA = 1

#: Packages whose versions every manifest records (missing ones are recorded as None).
RECORDED_PACKAGES = ("fp16guard", "onnx", "onnxruntime", "onnxruntime-gpu", "prefect", "polygraphy", "numpy", "pyarrow", "tensorrt")


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`RECORDED_PACKAGES` plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(providers: list[str] | None = None) -> dict[str, Any]:
    """Where the run computed: host, CPU, visible GPUs and the execution providers used."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_count": os.cpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if providers is not None:
        info["providers"] = list(providers)
    return info


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a file."""
    p = Path(path)
    return {"sha256": sha256_file(p), "bytes": p.stat().st_size}


def output_records(run_dir: str | os.PathLike, exclude: tuple[str, ...] = ("manifest.json",)) -> dict[str, dict]:
    """sha256 and size of every file of a run folder (the files the store publishes, see
    :func:`fp16guard.store.fs.run_files`), keyed by relative POSIX path, minus ``exclude``."""
    from fp16guard.store.fs import run_files

    root = Path(run_dir)
    return {rel: file_record(root / rel) for rel in run_files(root) if rel not in exclude}


def build_manifest(
    *,
    run_id: str,
    name: str,
    version: str,
    status: str,
    parameters: dict[str, Any],
    model: dict[str, Any],
    calibration: list[dict[str, Any]],
    holdout: list[dict[str, Any]],
    outputs: dict[str, dict],
    flow_run: dict[str, Any] | None = None,
    trigger: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
    providers: list[str] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Assemble the manifest of one run.

    Args:
        run_id: the store's id of this run.
        name: model name. version: model version.
        status: "verified" or "rejected".
        parameters: the run parameters (``RunParameters.model_dump()``).
        model: ``{"location", "sha256", "bytes"}`` of the FP32 model.
        calibration: per shard ``{"shard", "location", "sha256", "computed_by", "computed_at"}``.
        holdout: per shard ``{"shard", "location", "sha256"}``.
        outputs: ``{relative file name: {"sha256", "bytes"}}`` (see :func:`output_records`).
        flow_run: ``{"id", "name", "deployment_id", "deployment_name", "ui_url"}`` when in Prefect.
        trigger: ``{"type": "manual"|"schedule"|"event", ...}`` (event id and name for events).
        backend: the build backend's record (e.g. TensorRT version and typing mode).
        providers: execution providers used for statistics and verification.
        reason: why the run was rejected, if it was.

    Returns:
        A JSON-serialisable dict.
    """
    return {
        "schema": MANIFEST_SCHEMA,
        "run_id": run_id,
        "name": name,
        "version": version,
        "status": status,
        "reason": reason,
        "created": datetime.now(timezone.utc).isoformat(),
        "flow_run": flow_run,
        "trigger": trigger or {"type": "manual"},
        "parameters": parameters,
        "inputs": {"model": model, "calibration": calibration, "holdout": holdout},
        "outputs": outputs,
        "backend": backend or {"name": "onnxruntime"},
        "versions": package_versions(),
        "device": device_info(providers),
    }
