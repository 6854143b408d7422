"""GPU set-up shared by the benchmarks: onnxruntime(-gpu) providers and sessions, device-resident
inputs (IOBinding), the device's description, and PyTorch as an FP16 ground truth.

onnxruntime and torch are imported inside the functions: this module imports on a machine that
has only one of them.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from typing import Any, Sequence

__all__ = ["CPU", "CUDA", "BoundSession", "configure_torch", "device_description", "gpu_names", "providers", "session"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def providers(names: str | Sequence[str], nhwc: bool = True, tf32: bool = True, device_id: int = 0) -> list:
    """onnxruntime providers with the CUDA options every GPU benchmark uses.

    Args:
        names: ``"cpu"``, ``"cuda"`` (CUDA only: a node placed on the CPU would hide FP16), or a
            list of provider names, in order.
        nhwc: CUDA ``prefer_nhwc=1`` (default on; channels-last kernels, what deployments pick).
        tf32: CUDA ``use_tf32`` (default on, onnxruntime's own default: FP32 as deployed).
        device_id: CUDA device (default 0).
    """
    if isinstance(names, str):
        names = [CPU] if names == "cpu" else [CUDA]
    out: list = []
    for name in names:
        if name == CUDA:
            options: dict[str, Any] = {"device_id": device_id, "use_tf32": int(tf32)}
            if nhwc:
                options["prefer_nhwc"] = 1
            out.append((CUDA, options))
        else:
            out.append(name)
    return out


def session(model, providers_: list, opt_level: str = "all", cpu_fallback: bool = True, profile_prefix: str | None = None):
    """An onnxruntime session, quiet (warnings off).

    Args:
        model: ``onnx.ModelProto``, serialized bytes or a file path.
        providers_: from :func:`providers`.
        opt_level: ``disable``, ``basic``, ``extended`` or ``all`` (default).
        cpu_fallback: False sets ``session.disable_cpu_ep_fallback`` on a GPU session, so that the
            session fails instead of running an FP16 node on the CPU (which computes it in FP32).
        profile_prefix: turn onnxruntime's profiler on, files named from this prefix.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    first = providers_[0][0] if isinstance(providers_[0], tuple) else providers_[0]
    if not cpu_fallback and first != CPU:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    payload = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(payload, so, providers=providers_)


class BoundSession:
    """A session whose inputs and outputs stay on its device (IOBinding): one :meth:`run` is one
    timed unit, synchronised on both sides so the host clock covers the device's work."""

    def __init__(self, sess) -> None:
        self.session = sess
        self.device = "cuda" if sess.get_providers()[0] == CUDA else "cpu"
        self.binding = None

    def bind(self, feeds: dict) -> "BoundSession":
        """Copy ``feeds`` to the device once (cast to each input's float type); outputs stay there."""
        import numpy as np
        import onnxruntime as ort

        b = self.session.io_binding()
        for meta in self.session.get_inputs():
            arr = np.asarray(feeds[meta.name])
            if meta.type == "tensor(float16)":
                arr = arr.astype(np.float16)
            elif meta.type == "tensor(float)":
                arr = arr.astype(np.float32)
            b.bind_ortvalue_input(meta.name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.device, 0))
        for meta in self.session.get_outputs():
            b.bind_output(meta.name, self.device, 0)
        self.binding = b
        return self

    def run(self) -> None:
        """One run, inputs synchronised before and outputs after."""
        self.binding.synchronize_inputs()
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()


def gpu_names(fields: str = "name") -> list[str]:
    """One line per GPU from ``nvidia-smi --query-gpu=FIELDS`` (default the name); empty without
    ``nvidia-smi``."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    proc = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def device_description(providers_: list | None = None) -> str:
    """One line: the GPU (``nvidia-smi``: name, memory, driver) or the CPU, and onnxruntime's
    version and available providers when it imports."""
    parts = []
    gpu = "; ".join(gpu_names("name,memory.total,driver_version"))
    parts.append(f"GPU {gpu}" if gpu else f"no GPU seen ({platform.processor() or platform.machine()})")
    try:
        import onnxruntime as ort

        parts.append(f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")
    except ImportError:
        parts.append("onnxruntime not installed")
    if providers_:
        parts.append(f"providers asked: {providers_}")
    return ", ".join(parts)


def configure_torch(device: str):
    """Import torch and set it up as a ground truth for FP16 kernels, or return None (with a
    message on stderr) when ``device`` is CUDA and torch sees no GPU.

    Real FP16 GEMMs accumulate in FP32 (as tensor cores and TensorRT do); TF32 is off so the FP32
    islands really are FP32.

    Returns:
        ``(torch, device_name)`` or None.
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available to torch; use --device cpu to try the script", file=sys.stderr)
        return None
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else (platform.processor() or "cpu")
    return torch, name
