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
    .venv/bin/python -m benchmarks.gpu_gain pack benchmarks/results/real_models_lib-...json --out .gpu_bundle
    # on the GPU machine:
    python3 -m benchmarks.gpu_gain time .gpu_bundle --out $OUT/gpu_gain.json
    # here: the table
    .venv/bin/python -m benchmarks.gpu_gain render gpu_gain.json --out benchmarks/results/gpu_gain-....md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SUMMARY = "GPU gain kept: FP32, all-FP16 and artifact of each real model timed on onnxruntime-gpu"

BATCHES = (1, 16)
FASTER = 1.1  # all-FP16 must be at least 10 % faster for a gain to keep


# ---------------------------------------------------------------------------------------- pack


def pack(result_json: str, out: str, models: list[str] | None = None, max_mb: float = 60.0, code: str | None = None) -> None:
    """Copy each model's FP32 file, plan and sample into ``out/<model>/`` (largest models last,
    stopping before ``max_mb``); with ``code`` (a git revision), that commit's ``fp16guard/`` and
    ``tasks/`` into ``out/code/`` so the GPU machine rebuilds the artifacts with the code that made
    them (put ``out/code`` first on PYTHONPATH there)."""
    record = json.loads(Path(result_json).read_text())
    dest = Path(out)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if code:
        from benchmarks.real_models.fetch import cache_dir
        from benchmarks.real_models.run import export_code

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


class _Timed:
    """One session with IOBinding; inputs rebound per batch."""

    def __init__(self, model, providers, device: str = "cuda"):
        import onnxruntime as ort

        self.device = device
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        payload = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
        self.session = ort.InferenceSession(payload, opts, providers=providers)
        self.providers = self.session.get_providers()
        self.binding = None

    def bind(self, feeds: dict) -> None:
        import onnxruntime as ort

        s = self.session
        b = s.io_binding()
        for meta in s.get_inputs():
            arr = np.asarray(feeds[meta.name])
            if meta.type == "tensor(float16)":
                arr = arr.astype(np.float16)
            elif meta.type == "tensor(float)":
                arr = arr.astype(np.float32)
            b.bind_ortvalue_input(meta.name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.device, 0))
        for meta in s.get_outputs():
            b.bind_output(meta.name, self.device)
        self.binding = b

    def run(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
            out.append((time.perf_counter() - t) * 1e3)
        return out


def _gain(t32: float, t16: float, tart: float) -> tuple[float | None, str]:
    if t16 * FASTER > t32:
        return None, f"FP16 not ≥10% faster ({t32 / t16:.2f}×)"
    kept = (t32 - tart) / (t32 - t16)
    return kept, f"{100 * kept:.0f}%"


def time_bundle(bundle: str, out: str, warmup: int = 15, rounds: int = 5, iters: int = 20, models: list[str] | None = None, cpu: bool = False) -> dict:
    import onnxruntime as ort

    if (Path(bundle) / "code" / "fp16guard").is_dir():
        sys.path.insert(0, str((Path(bundle) / "code").resolve()))  # the code that made the plans
    from fp16guard.graph.convert import to_mixed_precision
    from fp16guard.io.model import input_specs, load_graph, load_model, save_model
    from fp16guard.plan.strategies import model_for_plan

    providers = ["CPUExecutionProvider"] if cpu else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    device = "cpu" if cpu else "cuda"
    root = Path(bundle)
    import fp16guard

    result: dict = {"bundle": json.loads((root / "bundle.json").read_text()), "onnxruntime": ort.__version__,
                    "fp16guard_from": str(Path(fp16guard.__file__).parent),
                    "available_providers": ort.get_available_providers(), "models": []}
    try:
        import torch

        result["device"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # torch is only used for the name
        result["device"] = f"? ({exc})"
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
            builds = {"fp32": _Timed(str(d / "model.onnx"), providers, device), "fp16": _Timed(fp16, providers, device),
                      "artifact": _Timed(built["path"], providers, device)}
            rec["providers"] = {k: v.providers[:1] for k, v in builds.items()}
            seen_batches = set()
            for batch in BATCHES:
                feeds, real = _feeds_at(sample, specs, batch)
                key = tuple((k, v.shape) for k, v in sorted(feeds.items()))
                if key in seen_batches:
                    rec["batches"].append({"batch": batch, "same_as_previous": True, "real_batch": real})
                    continue
                seen_batches.add(key)
                times: dict[str, list[float]] = {k: [] for k in builds}
                for k, b in builds.items():
                    b.bind(feeds)
                    b.run(warmup)
                for _ in range(rounds):
                    for k, b in builds.items():
                        times[k] += b.run(iters)
                med = {k: statistics.median(v) for k, v in times.items()}
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
        Path(out).write_text(json.dumps(result, indent=1, default=str))
    return result


# -------------------------------------------------------------------------------------- render


def render(result_json: str, out: str | None = None) -> str:
    r = json.loads(Path(result_json).read_text())
    b = r.get("bundle") or {}
    lines = [
        f"# GPU gain kept — {r.get('device')}, onnxruntime-gpu {r.get('onnxruntime')}",
        "",
        f"- Plans and artifacts from: `{b.get('source')}` (label {b.get('label')}, {b.get('when')}, commit {b.get('commit')})",
        f"- Timing: CUDA EP defaults (FP32 with TF32), IOBinding, {r['settings']['warmup']} warm-up runs, "
        f"{r['settings']['rounds']} interleaved rounds × {r['settings']['iters']} runs, medians (`benchmarks/gpu_gain.py`).",
        "- gain kept = (t_fp32 − t_artifact) / (t_fp32 − t_fp16) where all-FP16 is ≥10% faster than FP32.",
        f"- Not timed (bundle size limit): {', '.join(b.get('skipped_for_size') or []) or 'none'}",
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
        Path(out).write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        time_bundle(args.bundle, args.out, args.warmup, args.rounds, args.iters, args.models, args.cpu)
    else:
        print(render(args.result_json, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
