"""The verdict of a run in one honest first line: verified or rejected, and whether FP16 buys
anything.

A run that verifies by keeping most of its arithmetic in FP32 is not an FP16 model; a GPU
profile on which the artifact is not faster than FP32 (or on which FP16 itself is not faster) is
not a speed-up. Every view of a run (``fp16guard run``'s summary and ``--json``, the manifest,
report.html, the Prefect UI summary, the flow's log) takes its first line from
:func:`headline`, so they all say the same.

Pure functions over plain records: the FP16 share (:meth:`fp16guard.plan.cost.FP16Share.to_dict`)
and the profile record (:func:`fp16guard.backends.profile.profile_artifact`).
"""

from __future__ import annotations

from typing import Mapping

from fp16guard.plan.cost import fmt_share

__all__ = ["FP16_SPEEDUP_WORTH", "LOW_FP16_SHARE", "headline", "is_fp32_model", "share_text", "speed_verdict"]

#: Below this FP16 share of the estimated FLOPs (0..1) a verified run's first line warns that
#: the artifact is nearly the FP32 model.
LOW_FP16_SHARE = 0.5

#: All-FP16 must run at least this many times faster than FP32 (same batch, same GPU) for FP16
#: to be "worth it" (the profile's own no-gain margin: 5%).
FP16_SPEEDUP_WORTH = 1.05


def is_fp32_model(share: Mapping | None) -> bool:
    """True when no compute node (Conv/Gemm/MatMul...) is left in FP16, or no FLOP at all."""
    if not share:
        return False
    if share.get("share_flops") == 0:
        return True
    return bool(share.get("compute_nodes_total")) and not share.get("compute_nodes_fp16")


def share_text(share: Mapping | None) -> str | None:
    """The share's one line (``FP16 runs 97% of the estimated FLOPs (52 of 54 Conv/Gemm/MatMul
    nodes)``), or None without a record."""
    if not share:
        return None
    if share.get("summary"):
        return str(share["summary"])
    from fp16guard.plan.cost import FP16Share

    return FP16Share.from_dict(share).describe()


def speed_verdict(profile: Mapping | None) -> dict:
    """What a profile says about FP16's speed, judged at its largest batch (the throughput
    setting) and only from GPU timings.

    Returns:
        ``{"judged", "text"}``, plus, when judged, ``"batch", "speedup"`` (FP32 / artifact),
        ``"fp16_speedup"`` (FP32 / all-FP16), ``"gain_kept"`` ((FP32 - artifact) / (FP32 -
        all-FP16), None when all-FP16 is not faster), ``"artifact_faster"``, ``"fp16_worth_it"``,
        ``"warning"`` (the artifact or FP16 itself is not faster) and ``"device"``. ``judged``
        is False without a profile, when nothing was measured (CPU worker) or when the timings
        are CPU timings: those never stand for FP16's speed.
    """
    if not profile:
        return {"judged": False, "text": "speed not judged: the run was not profiled"}
    if profile.get("cpu_fallback_nodes"):
        return {"judged": False, "text": f"speed not judged: {len(profile['cpu_fallback_nodes'])} FP16 node(s) ran on the CPU provider, so the timings are not FP16's"}
    if not profile.get("measured"):
        return {"judged": False, "text": "speed not judged: no GPU profile, and FP16's speed is measured on a GPU worker only"}
    if not profile.get("fp16_kernels"):
        return {"judged": False, "text": "speed not judged: only CPU timings, which say nothing about FP16's speed"}
    rows = [r for r in profile.get("batches") or [] if r.get("speedup") and r.get("fp16_speedup")]
    if not rows:
        return {"judged": False, "text": "speed not judged: the profile has no timed batch"}
    row = max(rows, key=lambda r: r.get("batch") or 0)
    speedup, fp16, kept = float(row["speedup"]), float(row["fp16_speedup"]), row.get("gain_kept")
    worth = fp16 >= FP16_SPEEDUP_WORTH
    faster = speedup > 1.0
    device = profile.get("device") or "GPU"
    where = f"batch {row['batch']}, {device}"
    if not worth:
        text = f"FP16 is not worth it for this model on this runtime: all-FP16 runs at {fp16:.2f}x FP32 ({where})"
        if not faster:
            text += f"; the artifact at {speedup:.2f}x"
    elif not faster:
        text = f"the artifact is not faster than FP32: {speedup:.2f}x, where all-FP16 runs at {fp16:.2f}x ({where})"
    else:
        kept_text = "" if kept is None else f"keeps {max(float(kept), 0.0):.0%} of the FP16 gain: "
        text = f"{kept_text}{speedup:.2f}x FP32, all-FP16 {fp16:.2f}x ({where})"
    return {
        "judged": True, "text": text, "batch": row["batch"], "speedup": speedup, "fp16_speedup": fp16,
        "gain_kept": None if kept is None else float(kept), "artifact_faster": faster, "fp16_worth_it": worth,
        "warning": not (worth and faster), "device": device,
    }


def headline(passed: bool, reason: str | None = None, share: Mapping | None = None, speed: Mapping | None = None, independent: bool = True) -> str:
    """The first line of a run's verdict.

    Examples: ``VERIFIED: artifact matches FP32 within tolerance``; ``VERIFIED — but only 3% of
    the arithmetic runs in FP16: this is nearly the FP32 model``; ``VERIFIED — but no
    Conv/Gemm/MatMul node runs in FP16: the artifact is the FP32 model``; ``VERIFIED — but the
    artifact is not faster than FP32: 0.84x, ...``; ``REJECTED: <reason>``.

    Args:
        passed: verification passed.
        reason: why it failed (ignored when it passed).
        share: :meth:`fp16guard.plan.cost.FP16Share.to_dict`, or None when not estimated.
        speed: :func:`speed_verdict`, or None.
        independent: False when the holdout overlapped the calibration data (allowed with
            ``--allow-overlap``); the line then ends with ``(not independent: ...)``
            (:data:`fp16guard.preflight.NOT_INDEPENDENT`).
    """
    text = _headline(passed, reason, share, speed)
    if not independent:
        from fp16guard.preflight import NOT_INDEPENDENT

        text += f" ({NOT_INDEPENDENT})"
    return text


def _headline(passed: bool, reason: str | None, share: Mapping | None, speed: Mapping | None) -> str:
    if not passed:
        return f"REJECTED: {reason or 'verification failed'}"
    warnings = []
    value = (share or {}).get("share_flops")
    if is_fp32_model(share):
        warnings.append(f"no Conv/Gemm/MatMul node runs in FP16 ({fmt_share(value)} of the estimated FLOPs): the artifact is the FP32 model")
    elif value is not None and value < LOW_FP16_SHARE:
        warnings.append(f"only {fmt_share(value)} of the arithmetic runs in FP16: this is nearly the FP32 model")
    if speed and speed.get("judged") and speed.get("warning"):
        warnings.append(str(speed["text"]))
    if warnings:
        return "VERIFIED — but " + "; and ".join(warnings)
    return "VERIFIED: artifact matches FP32 within tolerance"
