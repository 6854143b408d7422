"""A run's outcome in fp16guard's words, for the flow run's log, and a link to its report that a
browser on the Prefect UI can open.

Pure functions over the run's records (and, for the link, the store's file system); the flow's
tasks log and publish them (``tasks/ui.py``). No Prefect import.
"""

from __future__ import annotations

import math
from collections import Counter

from fp16guard.records.verification import VerificationReport
from fp16guard.report.plan_summary import plan_lines
from fp16guard.report.verdict import share_text

__all__ = ["REPORT_LINK_EXPIRY_S", "outcome_lines", "report_link"]

#: Lifetime of a presigned report link: 7 days, the longest an S3 SigV4 presigned URL may live.
REPORT_LINK_EXPIRY_S = 7 * 24 * 3600


def outcome_lines(name: str, version: str, result: dict, plan: dict, verification: dict) -> list[str]:
    """The verdict's first line (when ``result`` has its ``headline``), the plan's size and FP16
    share of FLOPs (when estimated), then how it was found (the strategy and repair lines of
    :func:`fp16guard.report.plan_summary.plan_lines`, when the plan records them, e.g.
    ``repair: repaired — N nodes pinned in K iterations, T s``), the verification figures, the
    release decision, where the artifacts are. E.g. ``plan: 7 of 58 nodes stay FP32 (threshold
    10000; output_above_threshold 5, ...)``.

    A non-finite or unbounded worst error is written as such, never as a finite figure.
    """
    record = VerificationReport.from_dict(verification)
    fp32 = plan.get("fp32_nodes", [])
    reasons = Counter(n.get("reason", "?") for n in fp32)
    why = ", ".join(f"{r} {c}" for r, c in reasons.most_common(4))
    total = plan.get("counts", {}).get("nodes", "?")
    lines = []
    if result.get("headline"):  # the verdict's first line (fp16guard.report.verdict.headline)
        lines.append(f"verdict: {result['headline']}")
    lines.append(f"plan: {len(fp32)} of {total} nodes stay FP32 (threshold {plan.get('threshold')}" + (f"; {why})" if why else ")"))
    if share_text(result.get("fp16_share")):
        lines.append(f"fp16 share: {share_text(result.get('fp16_share'))}")
    lines += plan_lines(plan)

    worst = record.worst_rel_error
    worst_text = "none (no float outputs)" if worst is None else ("unbounded (NaN/inf or no comparison)" if not math.isfinite(worst) else f"{worst:.3g}")
    worst_output = _worst_output(record)
    cosines = [f.cosine for f in record.outputs.values() if f.cosine is not None and math.isfinite(f.cosine)]
    figures = f"worst relative error {worst_text}" + (f" (output '{worst_output}')" if worst_output else "")
    if cosines:
        figures += f", min cosine {min(cosines):.6g}"
    verdict = "verified" if record.passed else f"rejected: {record.reason}"
    lines.append(f"verification of {name}/{version} against FP32: {verdict}; {figures}" + (f"; checked with {record.execution}" if record.execution else ""))

    released = result.get("released")
    lines.append(f"release: {'released' if released else 'not released'} ({result.get('release_reason') or result.get('status', '')})")
    lines.append(f"artifacts: run folder {result.get('run_dir')}; report {result.get('report')}")
    return lines


def _worst_output(record: VerificationReport) -> str | None:
    worst, name = None, None
    for out, fig in record.outputs.items():
        if fig.kind == "exact" and not fig.error:
            continue
        value = fig.max_rel_error if fig.bounded else math.inf
        if worst is None or value > worst:
            worst, name = value, out
    return name


def report_link(store, name: str, version: str, run_id: str, expires_s: int = REPORT_LINK_EXPIRY_S) -> tuple[str | None, str]:
    """A URL to the run's ``report.html`` that a browser elsewhere can open, or why there is none.

    Object stores whose fsspec file system implements ``sign`` (s3fs: a presigned GET URL)
    give a link valid for ``expires_s`` seconds. A local store gives none: a ``file://`` path
    on the worker cannot be opened by a browser on another machine (and browsers do not follow
    ``file://`` links from an http page).

    Args:
        store: a :class:`fp16guard.store.runs.Store`.
        name, version, run_id: the run.
        expires_s: link lifetime in seconds (default 7 days).

    Returns:
        ``(url, note)``: ``url`` is None when no link can be made; ``note`` says what the link is
        or why there is none, in one sentence.
    """
    location = f"{store.run_url(name, version, run_id)}/report.html"
    inner = getattr(store.fs, "fs", None)  # the fsspec file system of a URL store
    if store.fs.is_local or inner is None:
        return None, (
            f"report.html is at {location} on the machine that ran the flow; a browser elsewhere cannot open that path "
            "(copy the file, or use an object store such as s3:// for a link)"
        )
    try:
        url = inner.sign(inner._strip_protocol(location), expiration=int(expires_s))
    except NotImplementedError:
        return None, f"report.html is at {location}; this store's file system ({type(inner).__name__}) cannot make presigned links"
    except Exception as exc:  # noqa: BLE001 - a link is a convenience: say why there is none
        return None, f"report.html is at {location}; no presigned link ({type(exc).__name__}: {exc})"
    days = expires_s / 86400
    return url, f"presigned link to {location}, valid for {days:g} day(s)"
