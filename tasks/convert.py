"""``calibrate_task``: :func:`fp16guard.convert` as a Prefect task, for users' own flows.

Usage::

    from prefect import flow
    from fp16guard.prefect import calibrate_task

    @flow
    def nightly():
        result = calibrate_task("model.onnx", ["calib/"], ["holdout/"], output="model.fp16.onnx")
        print(result.verdict())

A thin wrapper: the conversion is the library's (in the task's process, no fp16guard store, no
cache). ``fp16guard run`` is the orchestrated path with caching, the store and lineage.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from fp16guard.errors import VerificationFailed

__all__ = ["calibrate_task"]


@task(name="fp16guard-convert", task_run_name="fp16guard convert {model}")
def calibrate_task(
    model: str,
    calib: str | list[str],
    holdout: str | list[str] | None = None,
    output: str | None = None,
    options: dict[str, Any] | None = None,
    fail_on_reject: bool = True,
):
    """Convert ``model`` to mixed precision and verify it (:func:`fp16guard.convert`).

    Args:
        model: the FP32 ONNX model's path (readable where the task runs).
        calib: calibration data locations.
        holdout: holdout data locations; None: split from the calibration data.
        output: where to write the verified artifact (atomically); None: the work folder.
        options: any other keyword argument of :func:`fp16guard.convert` (``gate``,
            ``strategy``, ``providers``, ``overwrite``, ``threshold`` ...).
        fail_on_reject: raise :class:`fp16guard.errors.VerificationFailed` when the artifact is
            rejected, so the task run is Failed in the UI (default True); False returns the
            rejected result.

    Returns:
        The :class:`fp16guard.api.Result`.

    Raises:
        UserError: bad input (the task run fails with the one-line message).
        VerificationFailed: rejected and ``fail_on_reject``.

    Side effects:
        Logs the readable summary to the task run's log.
    """
    from prefect.logging import get_run_logger

    from fp16guard.api import convert

    result = convert(model, calib, holdout, output=output, **dict(options or {}))
    get_run_logger().info("%s", result)
    if fail_on_reject and not result.verified:
        raise VerificationFailed(result.reason or "rejected", result.verification.to_dict())
    return result
