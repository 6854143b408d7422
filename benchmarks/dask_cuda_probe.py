"""A ``dask-cuda`` cluster as fp16guard starts it (issue 18): one worker per visible GPU, each
pinned to its GPU, and CUDA device 0 inside each worker is that GPU.

The cluster is started from :func:`fp16guard.cluster.cuda_cluster_kwargs` (the arguments the
``dask-cuda`` task runner passes to ``dask_cuda.LocalCUDACluster``); every worker reports its
``CUDA_VISIBLE_DEVICES`` and the UUID of its CUDA device 0, which must be the UUID NVML gives for
the GPU the worker is pinned to (the first entry of its list), and the GPUs must all differ. It
times the cluster's start and one round of tasks. Needs a GPU, dask-cuda and NVML (nvidia-ml-py);
cupy or torch reads device 0.

    python -m benchmarks dask_cuda_probe [--workers N]
"""

from __future__ import annotations

import argparse
import time

SUMMARY = "dask-cuda cluster as the dask-cuda runner starts it: one worker per GPU, device 0 = its pinned GPU; start time"


def _worker_report() -> dict:
    """Run in a worker: its device list, and device 0 as CUDA numbers it (UUID, name)."""
    import os

    import pynvml

    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    pynvml.nvmlInit()
    try:
        first = listed.split(",")[0]
        handle = pynvml.nvmlDeviceGetHandleByUUID(first) if first.startswith("GPU-") else pynvml.nvmlDeviceGetHandleByIndex(int(first))
        pinned = pynvml.nvmlDeviceGetUUID(handle)
        pinned = pinned.decode() if isinstance(pinned, bytes) else pinned
    finally:
        pynvml.nvmlShutdown()
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        raw = props["uuid"]
        hexed = raw.hex() if isinstance(raw, bytes) else bytes(raw).hex()
        device0 = f"GPU-{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:32]}"
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        via = "cupy"
    except ImportError:
        import torch

        device0 = "GPU-" + str(torch.cuda.get_device_properties(0).uuid)
        name = torch.cuda.get_device_name(0)
        via = "torch"
    return {"pid": os.getpid(), "cuda_visible_devices": listed, "pinned_uuid": pinned, "device0_uuid": device0, "device0_name": name, "read_with": via}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks dask_cuda_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=None, help="GPUs to use (default: every visible one)")
    parser.add_argument("--label", default=None, help="suffix of the result files")
    args = parser.parse_args(argv)

    from benchmarks.harness import results
    from fp16guard.cluster import cuda_cluster_kwargs, visible_gpus

    ctx = results.context("dask_cuda_probe", argv)
    log = results.Log(ctx)
    from fp16guard.errors import ConfigError

    devices = visible_gpus()
    try:
        kwargs = cuda_cluster_kwargs(devices, args.workers)
    except ConfigError as exc:
        print(f"dask_cuda_probe: {exc}", file=__import__("sys").stderr)
        return 2
    log.say(f"visible GPUs: {devices}; LocalCUDACluster({kwargs})")

    import dask_cuda
    from distributed import Client

    start = time.perf_counter()
    with dask_cuda.LocalCUDACluster(**kwargs) as cluster, Client(cluster) as client:
        client.wait_for_workers(kwargs["n_workers"])
        started = time.perf_counter() - start
        t0 = time.perf_counter()
        reports = client.run(_worker_report)
        round_s = time.perf_counter() - t0
    workers = sorted(reports.values(), key=lambda r: r["cuda_visible_devices"])
    pinned_ok = all(r["pinned_uuid"] == r["device0_uuid"] for r in workers)
    distinct = len({r["pinned_uuid"] for r in workers}) == len(workers) == kwargs["n_workers"]
    log.say(f"cluster start: {started:.2f} s; one round of worker calls: {round_s:.3f} s (dask-cuda {dask_cuda.__version__})")
    log.say("| worker pid | CUDA_VISIBLE_DEVICES | pinned GPU (NVML) | CUDA device 0 | name |")
    log.say("|---|---|---|---|---|")
    for r in workers:
        log.say(f"| {r['pid']} | {r['cuda_visible_devices']} | {r['pinned_uuid']} | {r['device0_uuid']} ({r['read_with']}) | {r['device0_name']} |")
    log.say(f"device 0 is the pinned GPU in every worker: {pinned_ok}; one GPU per worker: {distinct}")
    record = {"kwargs": kwargs, "devices": devices, "cluster_start_s": started, "round_s": round_s, "workers": workers,
              "device0_is_pinned": pinned_ok, "one_gpu_per_worker": distinct, "dask_cuda": dask_cuda.__version__}
    for path in log.save(None, None, record, label=args.label):
        print(f"wrote {path}")
    return 0 if pinned_ok and distinct else 1
