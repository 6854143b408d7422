"""The preflight checks the flow repeats for runs that no CLI checked (deployments, events)."""

from __future__ import annotations

from prefect import task

from tasks.inputs import holdout_overlap

__all__ = ["check_independent_task"]


@task(name="check-independent")
def check_independent_task(calib: list[dict], holdout: list[dict], allow_overlap: bool) -> None:
    """Refuse a holdout that overlaps the calibration data unless ``allow_overlap``, as the CLI's
    preflight does (:func:`fp16guard.preflight.refuse_overlap`), before anything is staged.

    A deployment or event-started run reaches the flow without the CLI's preflight (issue 19);
    here it costs nothing: the overlap comes from the digests discovery computed
    (:func:`tasks.inputs.holdout_overlap`). A CLI run passed the same check already.

    Raises:
        DataError: the overlap, named, and how to accept it.
    """
    from fp16guard.preflight import refuse_overlap

    refuse_overlap(holdout_overlap(calib, holdout), allow_overlap)
