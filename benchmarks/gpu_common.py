"""Shared pieces of the GPU checks (``gpu_check.py``, ``gpu_check_models.py``): torch set-up for
a fair FP16 reference, the per-build summary of a verification report, and the table cells."""

from __future__ import annotations

import math
import platform

#: Width of one side's figures in the tables.
COL = 56


def configure_torch(device: str):
    """Import torch and set it up as a ground truth for FP16 kernels, or return None (with a
    message on stderr) when ``device`` is CUDA and torch sees no GPU.

    Real FP16 GEMMs accumulate in FP32 (as tensor cores and TensorRT do); TF32 is off so the FP32
    islands really are FP32.

    Returns:
        ``(torch, device_name)`` or None.
    """
    import sys

    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available to torch; use --device cpu to try the script", file=sys.stderr)
        return None
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else (platform.processor() or "cpu")
    return torch, name


class Log:
    """Print lines and keep them, to write the same table to a results file afterwards."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self, out: str | None, json_path: str | None, results: list) -> None:
        """Write the table to ``out`` and ``results`` as JSON to ``json_path`` (each if given)."""
        import json

        from fp16guard.io import atomic

        if out:
            atomic.write_text(out, "\n".join(self.lines) + "\n")
        if json_path:
            atomic.write_text(json_path, json.dumps(results, indent=2, default=str) + "\n")


def summarize(report: dict) -> dict:
    """Worst figures over the outputs of a verify/compare report.

    Returns:
        ``passed``, ``nonfinite`` (sum over float outputs), ``max_rel_error`` (max over float
        outputs; inf when undefined), ``cosine`` (min; NaN when any float output holds NaN/inf),
        ``mismatch`` (max mismatch fraction of integer/bool outputs; None when there are none),
        ``reason``.
    """
    nonfinite, rel, cos, mismatch = 0, 0.0, 1.0, None
    for fig in report["outputs"].values():
        if fig.get("kind") == "exact":
            mismatch = max(mismatch or 0.0, fig["mismatch_fraction"])
            continue
        if fig.get("kind") != "float":
            continue
        nonfinite += fig["nonfinite"]
        r = fig["max_rel_error"]
        rel = max(rel, math.inf if r is None else r)
        cos = min(cos, fig["cosine"]) if fig["cosine"] is not None else math.nan
    return {"passed": report["passed"], "nonfinite": nonfinite, "max_rel_error": rel, "cosine": cos, "mismatch": mismatch, "reason": report["reason"]}


def fmt(s: dict) -> str:
    """One side's figures as a fixed-width table cell."""
    rel = "inf" if math.isinf(s["max_rel_error"]) else f"{s['max_rel_error']:.3g}"
    cos = "n/a" if math.isnan(s["cosine"]) else f"{s['cosine']:.5f}"
    mis = "-" if s["mismatch"] is None else f"{s['mismatch']:.3g}"
    return f"{'PASS' if s['passed'] else 'FAIL':4s} nonfinite={s['nonfinite']:<6d} rel={rel:<9s} cos={cos:<8s} mism={mis:<5s}"


def agrees(emu: dict, real: dict) -> bool:
    """Same verdict, and NaN/inf on both sides or on neither."""
    return emu["passed"] == real["passed"] and (emu["nonfinite"] > 0) == (real["nonfinite"] > 0)
