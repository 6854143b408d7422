"""Prefect integration for users' own flows: ``from fp16guard.prefect import calibrate_task``.

The task lives in the orchestration layer (``tasks/convert.py``); this module only forwards the
name, on first access, so importing the library never imports Prefect (tests/test_layers.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["calibrate_task"]


def __getattr__(name: str) -> Any:
    # Loaded on first access: Prefect is imported only by users who ask for the task.
    if name == "calibrate_task":
        from tasks.convert import calibrate_task

        return calibrate_task
    raise AttributeError(f"module 'fp16guard.prefect' has no attribute {name!r}")
