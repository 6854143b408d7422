"""GPU gain kept: FP32, all-FP16 and the artifact of each real model, timed on onnxruntime-gpu.

For each model folder of a bundle (``pack`` makes it from a ``real_models.lib_run`` result):
``model.onnx`` (FP32), ``plan.json`` (the plan ``lib_run`` made), ``sample.npz`` (one holdout
shard). The artifact is rebuilt here from the FP32 model and the plan with the same code the
flow uses (``tasks.build.build_mixed_onnx_task``: folding replayed, ``to_mixed_precision``), and
the all-FP16 build with ``to_mixed_precision(model, set())``; their FP32-node lists and digests
are recorded so they can be matched with the CPU run. (Rebuilding keeps what travels to the
GPU machine small: the FP32 model and a plan.)

Timing: CUDA execution provider with onnxruntime's defaults (FP32 with TF32 on, as a deployment
runs it), one session per build, inputs bound once on the GPU and outputs left there
(IOBinding), ``--warmup`` untimed runs, then ``--rounds`` rounds of ``--iters`` timed runs with
the three builds interleaved round by round; the figure is the median over all timed runs.
Batch 1 and 16: inputs are cut or repeated along each input's batch axis
(``fp16guard.io.shards.batch_axes``: the axis the model's input shapes name as the batch, e.g.
axis 1 of an RNN state); a model without a batch axis, or with a static batch, runs at the batch
it has (reported).

gain kept = (t_fp32 − t_artifact) / (t_fp32 − t_fp16), reported only where all-FP16 is at least
10 % faster than FP32 (t_fp16 ≤ t_fp32 / 1.1); else "FP16 not faster".

Usage::

    # here: bundle a lib_run result (FP32 models, plans, samples) into a folder
    .venv/bin/python -m benchmarks gpu_gain pack benchmarks/results/real_models_lib-...json --out .gpu_bundle
    # on the GPU machine:
    python3 -m benchmarks gpu_gain time .gpu_bundle --out $OUT/gpu_gain.json
    # here: the table (with the GPU run's date, machine, commit, load and command)
    .venv/bin/python -m benchmarks gpu_gain render gpu_gain.json --out benchmarks/results/gpu_gain-....md

``bash benchmarks/gpu_gain_calls.sh`` prints the device calls for a lent GPU machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import gpu, timing  # noqa: E402
from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "GPU gain kept: FP32, all-FP16 and artifact of each real model timed on onnxruntime-gpu"

BATCHES = (1, 16)
FASTER = 1.1  # all-FP16 must be at least 10 % faster for a gain to keep


# ---------------------------------------------------------------------------------------- pack


def pack(result_json: str, out: str, models: list[str] | None = None, max_mb: float = 60.0, code: str | None = None) -> None:
    """Copy each model's FP32 file, plan and sample into ``out/<model>/`` (largest models last,
    stopping before ``max_mb``); with ``code`` (a git revision), that commit's ``fp16guard/`` and
    ``tasks/`` into ``out/code/`` so the GPU machine rebuilds the artifacts with the code that made
    them (put ``out/code`` first on PYTHONPATH there)."""
    record = bench_results.read_json(result_json, "a real_models_lib result (JSON)")
    dest = Path(out)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if code:
        from benchmarks.harness.code import export_code
        from benchmarks.real_models.fetch import cache_dir

        src, sha = export_code(code, cache_dir())
        for part in ("fp16guard", "tasks"):
            shutil.copytree(src / part, dest / "code" / part, ignore=shutil.ignore_patterns("__pycache__"))
        (dest / "code" / "COMMIT").write_text(sha)
    rows = [r for r in record["results"] if not r.get("error") and (not models or r["name"] in models)]
    rows.sort(key=lambda r: Path(r["model_path"]).stat().st_size)
    total = 0.0
    skipped = []
    for r in rows:
        src = Path(r["model_path"])
        art_dir = Path(r["artifact"]).parent
        if total + src.stat().st_size / 2**20 > max_mb:
            skipped.append(r["name"])
            continue
        d = dest / r["name"]
        d.mkdir()
        shutil.copy(src, d / "model.onnx")
        shutil.copy(art_dir / "plan.json", d / "plan.json")
        # one holdout shard, at most 4 samples along each input's batch axis, compressed
        from fp16guard.io.model import input_specs, load_graph
        from fp16guard.io.shards import batch_axes

        axes = batch_axes(input_specs(load_graph(str(src))))
        sample = dict(np.load(art_dir / "sample.npz"))
        sample = {k: (np.take(v, np.arange(min(4, v.shape[axes[k]])), axis=axes[k]) if axes.get(k) is not None and v.ndim > axes[k] else v)
                  for k, v in sample.items()}
        np.savez_compressed(d / "sample.npz", **sample)
        (d / "meta.json").write_text(json.dumps({"name": r["name"], "kind": r["kind"], "fp32_nodes": r["fp32_nodes"], "nodes_total": r["nodes_total"],
                                                 "share_flops": (r.get("share") or {}).get("share_flops"), "holdout": (r.get("holdout") or {}).get("worst"),
                                                 "artifact_sha256": hashlib.sha256(Path(r["artifact"]).read_bytes()).hexdigest()}))
        total += sum(f.stat().st_size for f in d.iterdir()) / 2**20
    (dest / "bundle.json").write_text(json.dumps({"source": result_json, "label": record.get("label"), "commit": record.get("commit"),
                                                 "when": record.get("when"), "skipped_for_size": skipped}, indent=1))
    print(f"packed {len(rows) - len(skipped)} models, {total:.1f} MiB into {dest}; skipped for size: {skipped}")


# ---------------------------------------------------------------------------------------- time


def _feeds_at(sample: dict, specs, batch: int) -> tuple[dict, int | None]:
    """The sample cut or repeated to ``batch`` along each input's batch axis; (feeds, real batch)."""
    from fp16guard.io.shards import batch_axes

    axes = batch_axes(specs)
    out, real = {}, None
    for name, arr in sample.items():
        arr = np.asarray(arr)
        ax = axes.get(name)
        spec = next((s for s in specs if s.name == name), None)
        static = spec is not None and ax is not None and ax < len(spec.shape or ()) and isinstance(spec.shape[ax], int)
        if ax is not None and not static and arr.ndim > ax:
            idx = np.arange(batch) % arr.shape[ax]
            arr = np.take(arr, idx, axis=ax)
            real = batch
        elif ax is not None and arr.ndim > ax and real is None:
            real = arr.shape[ax]
        out[name] = np.ascontiguousarray(arr)
    return out, real


def _gain(t32: float, t16: float, tart: float) -> tuple[float | None, str]:
    if t16 * FASTER > t32:
        return None, f"FP16 not ≥10% faster ({t32 / t16:.2f}×)"
    kept = (t32 - tart) / (t32 - t16)
    return kept, f"{100 * kept:.0f}%"


def time_bundle(bundle: str, out: str, warmup: int = 15, rounds: int = 5, iters: int = 20, models: list[str] | None = None, cpu: bool = False,
                ctx: dict | None = None) -> dict:
    import onnxruntime as ort

    if (Path(bundle) / "code" / "fp16guard").is_dir():
        sys.path.insert(0, str((Path(bundle) / "code").resolve()))  # the code that made the plans
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io import atomic
    from fp16guard.io.model import input_specs, load_graph, load_model, save_model
    from fp16guard.plan.strategies import model_for_plan

    providers = ["CPUExecutionProvider"] if cpu else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    root = Path(bundle)
    import fp16guard

    result: dict = {"context": ctx, "bundle": json.loads((root / "bundle.json").read_text()), "onnxruntime": ort.__version__,
                    "fp16guard_from": str(Path(fp16guard.__file__).parent),
                    "available_providers": ort.get_available_providers(), "models": []}
    names = gpu.gpu_names()
    result["device"] = names[0] if names else ("CPU (dry run)" if cpu else "no GPU seen by nvidia-smi")
    result["settings"] = {"warmup": warmup, "rounds": rounds, "iters": iters, "batches": list(BATCHES), "tf32": "onnxruntime default (use_tf32=1)"}
    print(f"device {result['device']}, onnxruntime {ort.__version__}", flush=True)
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.json").exists()):
        if models and d.name not in models:
            continue
        meta = json.loads((d / "meta.json").read_text())
        rec: dict = {"name": d.name, "meta": meta, "batches": []}
        result["models"].append(rec)
        t0 = time.monotonic()
        try:
            plan = json.loads((d / "plan.json").read_text())
            work = Path("/tmp/gpu_gain") / d.name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            # what tasks.build.build_mixed_onnx_task does (that module imports Prefect, absent there)
            fp32_set = {n["name"] for n in plan["fp32_nodes"]}
            target = save_model(to_mixed_precision(model_for_plan(load_model(str(d / "model.onnx")), plan), fp32_set), work / "model.mixed.onnx")
            built = {"path": str(target)}
            rec["artifact_sha256"] = hashlib.sha256(Path(built["path"]).read_bytes()).hexdigest()
            rec["artifact_matches_cpu_run"] = rec["artifact_sha256"] == meta.get("artifact_sha256")
            fp16 = to_mixed_precision(load_model(str(d / "model.onnx")), set(), check=False)
            specs = input_specs(load_graph(str(d / "model.onnx")))
            sample = dict(np.load(d / "sample.npz"))
            # onnxruntime's defaults (TF32 on for FP32, as a deployment runs it): plain provider names.
            builds = {k: gpu.BoundSession(gpu.session(m, providers)) for k, m in
                      (("fp32", str(d / "model.onnx")), ("fp16", fp16), ("artifact", built["path"]))}
            rec["providers"] = {k: v.session.get_providers()[:1] for k, v in builds.items()}
            seen_batches = set()
            for batch in BATCHES:
                feeds, real = _feeds_at(sample, specs, batch)
                key = tuple((k, v.shape) for k, v in sorted(feeds.items()))
                if key in seen_batches:
                    rec["batches"].append({"batch": batch, "same_as_previous": True, "real_batch": real})
                    continue
                seen_batches.add(key)
                timed = timing.interleaved({k: b.bind(feeds).run for k, b in builds.items()}, warmup, rounds, iters)
                times = {k: t.samples_ms for k, t in timed.items()}
                med = {k: t.median_ms for k, t in timed.items()}
                kept, text = _gain(med["fp32"], med["fp16"], med["artifact"])
                row = {"batch": batch, "real_batch": real, "fp32_ms": med["fp32"], "fp16_ms": med["fp16"], "artifact_ms": med["artifact"],
                       "fp16_speedup": med["fp32"] / med["fp16"], "artifact_speedup": med["fp32"] / med["artifact"], "gain_kept": kept, "gain_text": text,
                       "iqr_ms": {k: float(np.subtract(*np.percentile(v, [75, 25]))) for k, v in times.items()}}
                rec["batches"].append(row)
                print(f"{d.name} b{batch} (real {real}): fp32 {med['fp32']:.3f} ms, fp16 {med['fp16']:.3f}, artifact {med['artifact']:.3f} -> {text}", flush=True)
        except Exception as exc:
            import traceback

            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc()[-2000:]
            print(f"{d.name}: {rec['error']}", flush=True)
        rec["seconds"] = round(time.monotonic() - t0, 1)
        atomic.write_text(out, json.dumps(result, indent=1, default=str))  # after every model: a killed run keeps what it timed
    return result


# -------------------------------------------------------------------------------------- render


def render(result_json: str, out: str | None = None) -> str:
    r = bench_results.read_json(result_json, "a gpu_gain time result (JSON)")
    b = r.get("bundle") or {}
    lines = [
        f"# GPU gain kept — {r.get('device')}, onnxruntime-gpu {r.get('onnxruntime')}",
        "",
        f"- Plans and artifacts from: `{b.get('source')}` (label {b.get('label')}, {b.get('when')}, commit {b.get('commit')})",
        f"- Timing: CUDA EP defaults (FP32 with TF32), IOBinding, {r['settings']['warmup']} warm-up runs, "
        f"{r['settings']['rounds']} interleaved rounds × {r['settings']['iters']} runs, medians (`python -m benchmarks gpu_gain`).",
        "- gain kept = (t_fp32 − t_artifact) / (t_fp32 − t_fp16) where all-FP16 is ≥10% faster than FP32.",
        f"- Not timed (bundle size limit): {', '.join(b.get('skipped_for_size') or []) or 'none'}",
        *(bench_results.context_lines(r["context"]) if r.get("context") else []),
        "",
        "| model | FP32 nodes | batch | FP32 ms | all-FP16 ms | artifact ms | FP16 speed-up | artifact speed-up | gain kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        meta = m.get("meta") or {}
        if m.get("error"):
            lines.append(f"| {m['name']} | {meta.get('fp32_nodes')} / {meta.get('nodes_total')} | — | error: {m['error'][:120]} | | | | | |")
            continue
        for row in m["batches"]:
            if row.get("same_as_previous"):
                lines.append(f"| {m['name']} | | {row['batch']} | same inputs as batch 1 (no batch axis or static batch {row.get('real_batch')}) | | | | | |")
                continue
            rb = row.get("real_batch")
            bcell = f"{row['batch']}" + (f" (runs at {rb})" if rb is not None and rb != row["batch"] else "")
            lines.append(f"| {m['name']} | {meta.get('fp32_nodes')} / {meta.get('nodes_total')} | {bcell} | {row['fp32_ms']:.3f} | {row['fp16_ms']:.3f} | "
                         f"{row['artifact_ms']:.3f} | {row['fp16_speedup']:.2f}× | {row['artifact_speedup']:.2f}× | {row['gain_text']} |")
    text = "\n".join(lines) + "\n"
    if out:
        from fp16guard.io import atomic

        atomic.write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu_gain", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("result_json")
    a.add_argument("--out", default=".gpu_bundle")
    a.add_argument("--models", nargs="+")
    a.add_argument("--max-mb", type=float, default=60.0)
    a.add_argument("--code", help="git revision whose fp16guard/ and tasks/ go into the bundle (code/)")
    t = sub.add_parser("time")
    t.add_argument("bundle")
    t.add_argument("--out", required=True)
    t.add_argument("--models", nargs="+")
    t.add_argument("--warmup", type=int, default=15)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--iters", type=int, default=20)
    t.add_argument("--cpu", action="store_true", help="dry run of the harness on the CPU provider (no GPU figure)")
    r = sub.add_parser("render")
    r.add_argument("result_json")
    r.add_argument("--out")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.result_json, args.out, args.models, args.max_mb, args.code)
    elif args.cmd == "time":
        time_bundle(args.bundle, args.out, args.warmup, args.rounds, args.iters, args.models, args.cpu, bench_results.context("gpu_gain", argv))
    else:
        print(render(args.result_json, args.out))
    return 0
