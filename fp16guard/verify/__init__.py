"""Verification against FP32: run both models on holdout data and judge each output.

- :mod:`fp16guard.verify.compare`: the comparison loop, numeric figures and the gate;
- :mod:`fp16guard.verify.task_checks`: top-1/top-k and thresholded-map agreement, per-output gates;
- :mod:`fp16guard.verify.attribute`: per-node FP16 error attribution (for plan repair).

Submodules are imported on use, so importing one does not load onnxruntime for the others.
"""

__all__ = ["attribute", "compare", "task_checks"]
