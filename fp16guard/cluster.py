"""What a task runner needs from this host: is its package installed, which GPUs are visible,
and the arguments of a one-worker-per-GPU Dask cluster. No Prefect, no Dask import at module
level: the runners themselves are built in ``tasks/runners.py``.

``dask-cuda``'s ``LocalCUDACluster`` starts one worker process per GPU and gives each a rotated
``CUDA_VISIBLE_DEVICES`` (worker *i* sees its own GPU first), so inside a worker CUDA device 0 is
the GPU it is pinned to; onnxruntime's CUDA provider uses device 0 unless told otherwise, which
fp16guard never does (:mod:`fp16guard.runners.onnxrt`).
"""

from __future__ import annotations

import os
import subprocess
from typing import Mapping, Sequence

from fp16guard.errors import ConfigError

__all__ = ["check_runner", "cuda_cluster_kwargs", "visible_gpus"]

#: What each runner imports, and the extra that installs it.
_NEEDS = {
    "dask": (("prefect_dask", "distributed"), "dask"),
    "dask-cuda": (("prefect_dask", "distributed", "dask_cuda"), "dask-cuda"),
}


def visible_gpus(environ: Mapping[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPUs a process started here may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    Args:
        environ: the environment (default ``os.environ``). ``CUDA_VISIBLE_DEVICES`` set: its
            entries (indices or UUIDs) up to the first invalid one, as CUDA reads it ("" or "-1":
            none). Unset: every GPU the driver reports.
        count: GPUs the driver reports (default: asked of NVML, then ``nvidia-smi -L``; 0 when
            neither answers, e.g. on a host without an NVIDIA driver).

    Returns:
        Device entries in order; empty when no GPU is visible. Never raises.
    """
    env = os.environ if environ is None else environ
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA stops at the first invalid entry
            devices.append(entry)
        return devices
    n = _driver_gpu_count() if count is None else count
    return [str(i) for i in range(max(0, n))]


def _driver_gpu_count() -> int:
    try:
        import pynvml  # installed with dask-cuda

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 — no module, no driver, no device: ask nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def cuda_cluster_kwargs(devices: Sequence[str], workers: int | None = None) -> dict:
    """Arguments of ``dask_cuda.LocalCUDACluster``: one worker process per GPU, one task at a
    time on each (a worker holds one onnxruntime session on its GPU), no dashboard port.

    Args:
        devices: visible GPUs (:func:`visible_gpus`).
        workers: use the first ``workers`` of them (default: all).

    Raises:
        ConfigError: no GPU, or more workers than GPUs.
    """
    if not devices:
        raise ConfigError("task runner 'dask-cuda' needs at least one NVIDIA GPU; none is visible here (CUDA_VISIBLE_DEVICES and the driver list none); use --task-runner dask on a host without GPUs")
    n = len(devices) if workers is None else workers
    if not 1 <= n <= len(devices):
        raise ConfigError(f"--workers {n} with task runner 'dask-cuda' is not accepted: {len(devices)} GPU(s) are visible ({','.join(devices)}); expected 1 to {len(devices)}, one worker per GPU")
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(devices[:n]),
        "n_workers": n,
        "threads_per_worker": 1,
        "dashboard_address": None,  # no fixed port: runs on a shared host must not collide
        "memory_limit": 0,  # onnxruntime sessions are the work: no Dask memory pauses
    }


def _unusable(module: str) -> str | None:
    """Why ``module`` cannot be used here (None: it can). dask_cuda is imported (it fails on a
    host without CUDA); the others are only looked up, so preflight does not import Prefect."""
    import importlib.util

    if module != "dask_cuda":
        return None if importlib.util.find_spec(module) is not None else "is not installed"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError:
        return "is not installed"
    except Exception as exc:  # noqa: BLE001 — without CUDA dask_cuda raises more than ImportError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"cannot be imported here ({type(exc).__name__}: {first})"
    return None


def check_runner(execution) -> None:
    """Raise when the runner ``execution`` names cannot start here (run before the flow starts).

    Args:
        execution: :class:`fp16guard.settings.ExecutionSettings`.

    Raises:
        ConfigError: one line naming what is missing: a package (and the extra that installs
            it), a GPU for ``dask-cuda``, or more workers than GPUs.
    """
    needs = _NEEDS.get(execution.task_runner)
    if needs is None:
        return
    modules, extra = needs
    if execution.dask_address:
        modules = _NEEDS["dask"][0]  # an existing cluster's workers hold the GPUs, not this process
    for module in modules:
        why = _unusable(module)
        if why:
            raise ConfigError(f"task runner '{execution.task_runner}' needs {module.replace('_', '-')}, which {why}; install it with pip install 'fp16guard[{extra}]'")
    if execution.task_runner == "dask-cuda" and not execution.dask_address:
        cuda_cluster_kwargs(visible_gpus(), execution.workers)
