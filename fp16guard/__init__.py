"""fp16guard: keep the FP16-overflowing nodes of an ONNX model in FP32, proven against FP32.

The library package has no Prefect import: every stage is a pure function over paths,
arrays, ONNX protos and Arrow tables. ``tasks/`` and ``flows/`` wrap it for Prefect.
"""

__version__ = "0.1.0"

#: Largest finite FP16 magnitude.
FP16_MAX = 65504.0
