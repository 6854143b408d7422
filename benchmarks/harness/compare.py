"""Emulation against real FP16: the worst figures of a verification report, as a table cell,
and whether two sides agree (``gpu_check``, ``gpu_check_models``)."""

from __future__ import annotations

import math

__all__ = ["COL", "agrees", "fmt", "summarize"]

#: Width of one side's figures in the tables.
COL = 56
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
