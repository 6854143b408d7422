"""The Python API: :func:`convert` and its :class:`Result`.

``fp16guard.convert(model, calib, holdout, output=...)`` runs the same library code as the
``fp16guard run`` flow (statistics, plan, repair, build, verification) in this process, with
no Prefect server and no Prefect import. See docs/API.md.
"""

from fp16guard.api.pipeline import convert
from fp16guard.api.result import Result

__all__ = ["Result", "convert"]
