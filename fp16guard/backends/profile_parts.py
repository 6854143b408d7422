"""One profile record from records of one batch size each (issue 18: the flow times each batch
size as its own task, on a GPU of its own under ``dask-cuda``, and merges them here).

The merge gives what :func:`fp16guard.backends.profile.profile_artifact` gives for all the
batches at once: rows in the given order, and one session that fell back to the CPU makes the
whole record a CPU latency (``fp16_kernels`` False, the CPU note), as it does there.
"""

from __future__ import annotations

from typing import Mapping, Sequence

__all__ = ["merge_profiles"]


def merge_profiles(records: Sequence[Mapping]) -> dict:
    """Merge per-batch profile records, in batch order.

    Args:
        records: :func:`~fp16guard.backends.profile.profile_artifact` records, one batch size each.

    Returns:
        One record: ``batches`` rows of all, ``measured`` / ``fp16_kernels`` only when true of
        every record, ``device`` the one device (or every device, " / "-joined, when the batches
        ran on different GPU models), ``summary`` recomputed.

    Raises:
        ValueError: no record.
    """
    from fp16guard.backends.profile import speed_summary

    if not records:
        raise ValueError("no profile record to merge; expected one per batch size")
    if len(records) == 1:
        return dict(records[0])
    merged = dict(records[0])
    if not all(r.get("measured") for r in records):
        # nothing was timed (the CPU): every record says so alike; keep the one that says why
        unmeasured = next(r for r in records if not r.get("measured"))
        return dict(unmeasured)
    merged["batches"] = [dict(row) for r in records for row in r.get("batches") or []]
    devices = list(dict.fromkeys(str(r["device"]) for r in records if r.get("device")))
    merged["device"] = " / ".join(devices) if devices else None
    cpu = next((r for r in records if not r.get("fp16_kernels")), None)
    if cpu is not None:
        merged.update(fp16_kernels=False, tf32=None, device=cpu.get("device"), providers=cpu.get("providers"), note=cpu.get("note"))
    merged["summary"] = speed_summary(merged)
    return merged
