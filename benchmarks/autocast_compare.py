"""fp16guard against NVIDIA ModelOpt AutoCast on the real models: FP32 nodes and holdout error on
the same data and the same gate (issue 17: never more FP32 nodes than AutoCast where AutoCast's
output passes).

AutoCast runs with its defaults (``convert_to_mixed_precision(onnx_path, "fp16",
calibration_data=...)``: data_max 512, init_max 65504) in its own virtual environment
(``--venv``, default ``/work/autocast-venv`` with ``nvidia-modelopt[onnx]``; see
``autocast_convert.py``), with the model's calibration shards merged into one ``.npz`` (along
each input's batch axis; the first shard alone where shards differ in shape). Its output is then
verified here exactly as fp16guard's artifact is: ``fp16guard.verify.compare.verify`` on the
holdout shards, CPU, FP16 storage emulation, default ``VerifySettings()``.

FP32 nodes are counted two ways:

* *native*: AutoCast's own list of nodes kept in high precision (its classifier's log); for
  fp16guard the plan's FP32 nodes;
* *same count*: on each built model, the original's nodes that produce a float tensor and whose
  outputs are still FLOAT (FP32) there — one yardstick for both.

fp16guard's side comes from a ``real_models.lib_run`` result (``--fp16guard``).

Usage::

    .venv/bin/python -m benchmarks autocast_compare --fp16guard benchmarks/results/real_models_lib-...json \\
        --models magika basic-pitch yolov8n-nudenet --label final

Writes ``benchmarks/results/autocast_compare-DATE-MACHINE[-LABEL].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.real_models import flops as _flops  # noqa: E402
from benchmarks.real_models.fetch import cache_dir  # noqa: E402
from benchmarks.real_models.lib_run import spec_by_name, worst_error  # noqa: E402
from benchmarks.real_models.run import prepare  # noqa: E402
from benchmarks.harness import results as bench_results  # noqa: E402
from benchmarks.harness.code import worktree_label  # noqa: E402

SUMMARY = "fp16guard against NVIDIA ModelOpt AutoCast on the real models: FP32 nodes and holdout error"

FLOAT, FLOAT16 = 1, 10


def merged_calibration(calib_dir: Path, model_path: Path, out: Path) -> str:
    """The calibration shards as one ``.npz`` for AutoCast; returns how it was made."""
    from fp16guard.io.model import input_specs, load_graph
    from fp16guard.io.shards import batch_axes

    files = sorted(calib_dir.glob("*.npz"))
    shards = [dict(np.load(f)) for f in files]
    axes = batch_axes(input_specs(load_graph(str(model_path))))
    try:
        merged = {}
        for name in shards[0]:
            ax = axes.get(name)
            if ax is None:
                if any(not np.array_equal(s[name], shards[0][name]) for s in shards):
                    raise ValueError(f"{name} has no batch axis and differs between shards")
                merged[name] = shards[0][name]
            else:
                merged[name] = np.concatenate([s[name] for s in shards], axis=ax)
        np.savez(out, **merged)
        return f"{len(shards)} shards merged"
    except ValueError as exc:
        np.savez(out, **shards[0])
        return f"first shard only ({exc})"


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def precision_counts(original, built) -> dict:
    """Nodes of ``original`` that produce a float tensor, and how many of them ``built`` keeps FP32."""
    feeds = None
    _, orig_types = _flops._inferred_shapes(original, feeds or {})
    _, built_types = _flops._inferred_shapes(built, feeds or {})
    built_nodes = {n.name: n for n in built.graph.node}
    float_nodes = fp32 = fp16 = missing = 0
    for node in original.graph.node:
        if not any(orig_types.get(t) == FLOAT for t in node.output if t):
            continue  # only nodes that produce a float tensor (Shape of a float tensor is no FP32 node)
        float_nodes += 1
        other = built_nodes.get(node.name)
        if other is None:
            missing += 1
            continue
        outs = [built_types.get(t) for t in other.output if t]
        ins = [built_types.get(t) for t in other.input if t]
        if FLOAT16 in outs or (FLOAT not in outs and FLOAT16 in ins):
            fp16 += 1
        elif FLOAT in outs or FLOAT in ins:
            fp32 += 1
    return {"float_nodes": float_nodes, "fp32": fp32, "fp16": fp16, "missing": missing}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks autocast_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--fp16guard", required=True, help="a real_models.lib_run result JSON (fp16guard's side)")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--venv", default="/work/autocast-venv")
    p.add_argument("--label", default=None)
    p.add_argument("--reuse", action="store_true", help="reuse AutoCast's output from an earlier run on the same calibration file")
    p.add_argument("--results", default=None, help="folder for the result files (default benchmarks/results)")
    args = p.parse_args(argv)
    from fp16guard.io.model import load_model
    from fp16guard.io.shards import discover_shards
    from fp16guard.settings import VerifySettings
    from fp16guard.verify.compare import verify

    cache = cache_dir()
    ours = {r["name"]: r for r in json.loads(Path(args.fp16guard).read_text())["results"] if not r.get("error")}
    ctx = bench_results.context("autocast_compare", argv, fp16guard_code=worktree_label())
    py = Path(args.venv) / "bin" / "python"
    version = subprocess.run([str(py), "-c", "import modelopt; print(modelopt.__version__)"], capture_output=True, text=True)
    rows = []
    for name in args.models:
        spec = spec_by_name(name)
        model_path, calib_dir, holdout_dir = prepare(spec, cache, 0)
        work = cache / "autocast" / name
        work.mkdir(parents=True, exist_ok=True)
        how = merged_calibration(calib_dir, model_path, work / "calib.npz")
        t = time.monotonic()
        reuse = args.reuse and (work / "autocast.json").exists() and (work / "calib.sha256").exists() and \
            (work / "calib.sha256").read_text() == _digest(work / "calib.npz")
        if reuse:
            info = json.loads((work / "autocast.json").read_text())
            info["reused"] = True
        else:
            (work / "autocast.json").unlink(missing_ok=True)
            proc = subprocess.run([str(py), str(REPO / "benchmarks" / "autocast_convert.py"), str(model_path), str(work / "calib.npz"),
                                   str(work / "autocast.onnx"), str(work / "autocast.json")], capture_output=True, text=True, timeout=1800)
            info = json.loads((work / "autocast.json").read_text()) if (work / "autocast.json").exists() else {"ok": False, "error": proc.stderr[-1500:]}
            (work / "calib.sha256").write_text(_digest(work / "calib.npz"))
        row: dict = {"name": name, "calibration": how, "autocast": {k: v for k, v in info.items() if k not in ("low_precision_nodes",)},
                     "autocast_seconds_wall": round(time.monotonic() - t, 1)}
        original = load_model(str(model_path))
        if info.get("ok"):
            try:
                holdout = discover_shards([str(holdout_dir)], "holdout")
                rep = verify(str(model_path), str(work / "autocast.onnx"), holdout, VerifySettings(), providers=["CPUExecutionProvider"], emulate=True)
                row["autocast_holdout"] = {"passed": bool(rep.get("passed")), "worst": worst_error(rep), "reason": rep.get("reason")}
            except Exception as exc:
                row["autocast_holdout"] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                row["autocast_counts"] = precision_counts(original, load_model(str(work / "autocast.onnx")))
            except Exception as exc:
                row["autocast_counts"] = {"error": f"{type(exc).__name__}: {exc}"}
        hp = info.get("high_precision_nodes")
        row["autocast_native_fp32"] = len(hp) if isinstance(hp, list) else None
        mine = ours.get(name)
        if mine:
            row["fp16guard"] = {"fp32_nodes": mine["fp32_nodes"], "nodes_total": mine["nodes_total"], "holdout": mine["holdout"]["worst"],
                                "passed": mine["holdout"]["passed"], "seconds": (mine.get("seconds") or {}).get("total")}
            try:
                row["fp16guard_counts"] = precision_counts(original, load_model(mine["artifact"]))
            except Exception as exc:
                row["fp16guard_counts"] = {"error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        print(json.dumps({k: row.get(k) for k in ("name", "autocast_native_fp32", "autocast_counts", "autocast_holdout", "fp16guard", "fp16guard_counts")}, default=str)[:900], flush=True)
    record = {"modelopt": version.stdout.strip() or version.stderr.strip()[-300:], "fp16guard_result": args.fp16guard, "rows": rows}
    lines = [f"- fp16guard side: `{args.fp16guard}`",
             "- Same calibration data (AutoCast: the shards merged into one .npz), same holdout, same gate (default `VerifySettings()`: max rel. error 0.02, "
             "cosine 0.999), both verified by fp16guard's verifier (CPU, FP16 storage emulation).",
             "- FP32 nodes: *native* = AutoCast's high-precision list / fp16guard's plan; *same count* = nodes of the original that produce a float tensor "
             "and still output FLOAT in the built model (one yardstick for both).", "",
             "| model | AutoCast FP32 (native / same count) | AutoCast holdout | fp16guard FP32 (plan / same count) | fp16guard holdout | fewer or equal FP32 where AutoCast passes? |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ac, fg = r.get("autocast_counts") or {}, r.get("fp16guard_counts") or {}
        ah = r.get("autocast_holdout") or {}
        if not r["autocast"].get("ok"):
            acell, hcell = f"failed: {r['autocast'].get('error', '')[:150]}", "—"
        else:
            acell = f"{r.get('autocast_native_fp32')} / {ac.get('fp32')}"
            hcell = ("passes " if ah.get("passed") else "fails ") + ((ah.get("worst") or {}).get("text") or ah.get("error", "?"))
        f = r.get("fp16guard") or {}
        fcell = f"{f.get('fp32_nodes')} / {fg.get('fp32')}" if f else "—"
        fh = (("passes " if f.get("passed") else "fails ") + (f.get("holdout") or {}).get("text", "?")) if f else "—"
        verdict = "—"
        if ah.get("passed") and f and ac.get("fp32") is not None and fg.get("fp32") is not None:
            verdict = "yes" if fg["fp32"] <= ac["fp32"] else f"**no** ({fg['fp32']} vs {ac['fp32']})"
        elif r["autocast"].get("ok"):
            verdict = "n/a (AutoCast's output fails the gate)"
        lines.append(f"| {r['name']} | {acell.replace('|', '/')} | {hcell} | {fcell} | {fh} | {verdict} |")
    js, md = bench_results.write(ctx, record, "\n".join(lines), label=args.label, results_dir=args.results,
                                 title=f"fp16guard vs ModelOpt AutoCast {record['modelopt']}")
    print("\n".join(lines))
    print(f"wrote {md} and {js.name}")
    return 0
