"""Run NVIDIA ModelOpt AutoCast (default settings, FP16) on one model; for ``autocast_compare.py``.

Runs inside a separate virtual environment that has ``nvidia-modelopt[onnx]`` (never the
project's: it pins its own onnx and onnxruntime). Imports nothing from fp16guard.

    /work/autocast-venv/bin/python benchmarks/autocast_convert.py MODEL.onnx CALIB.npz OUT.onnx OUT.json

Writes the converted model and a JSON with the modelopt version, the seconds and the nodes
AutoCast's classifier kept in high precision (from its own log), or the error.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback


def main() -> int:
    model, calib, out, info = sys.argv[1:5]
    rec: dict = {"model": model, "calibration": calib}
    t = time.monotonic()
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, r):
            records.append(r.getMessage())

    try:
        import modelopt
        import onnx
        from modelopt.onnx.autocast import convert_to_mixed_precision
        from modelopt.onnx.autocast.logging_config import logger

        grab = Grab()
        grab.setLevel(logging.DEBUG)
        logger.addHandler(grab)
        logger.setLevel(logging.DEBUG)
        rec["modelopt"] = modelopt.__version__
        converted = convert_to_mixed_precision(onnx_path=model, low_precision_type="fp16", calibration_data=calib)
        onnx.save(converted, out)
        rec["ok"] = True
    except Exception as exc:
        rec["ok"] = False
        rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        rec["traceback"] = traceback.format_exc()[-3000:]
    rec["seconds"] = round(time.monotonic() - t, 2)
    import ast

    for m in records:
        for key, field in (("High Precision Nodes: ", "high_precision_nodes"), ("Low Precision Nodes: ", "low_precision_nodes")):
            if m.startswith(key):
                try:
                    rec[field] = list(ast.literal_eval(m[len(key):]))
                except (ValueError, SyntaxError):
                    rec[field] = m[len(key):][:5000]
    rec["log_tail"] = [m for m in records if not m.startswith(("High Precision Nodes", "Low Precision Nodes", "cast ", "Updated type"))
                       and ("precision" in m.lower() or "skipping" in m.lower())][-40:]
    with open(info, "w") as f:
        json.dump(rec, f, indent=1)
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
