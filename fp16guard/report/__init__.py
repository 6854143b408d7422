"""What people see of a run: ``report.html`` (:mod:`fp16guard.report.html`, from the Jinja2
template in ``templates/``, with the SVG chart of :mod:`fp16guard.report.chart`) and the Prefect
UI summary (:mod:`fp16guard.report.summary`)."""

__all__ = ["chart", "html", "summary"]
