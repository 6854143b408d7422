"""Benchmark (issue 18 item 4): what pinning the statistics sessions to one intra-op thread costs.

The statistics pass runs every onnxruntime session on :data:`fp16guard.stats.collect.STATS_THREADS`
(one) intra-op thread, since onnxruntime's kernels give thread-count-dependent bits. Before, one
worker's session used onnxruntime's choice (every core). On real models of the local cache, the
per-shard instrumented inference (packed outputs, as the pass runs it) is timed at 1 thread and
at onnxruntime's choice, in interleaved rounds: wall-clock and process CPU milliseconds per shard
(medians), whether the two give the same output bits, and the sha256 of the statistics table the
pass now writes (shard names left out).

Writes ``benchmarks/results/stats_threads-<date>-<machine>.{json,md}`` (date, machine, load,
commit, command, one line per model).

Usage:
    .venv/bin/python -m benchmarks stats_threads [--models basic-pitch,ocr-rec] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import results as bench_results  # noqa: E402

SUMMARY = "Per-shard cost of the statistics sessions on one intra-op thread against onnxruntime's choice, on real models"

#: name -> (model file, calibration folder), relative to --root (the real-model cache).
MODELS = {
    "basic-pitch": ("files/basic_pitch-0.4.0/nmp.onnx", "data/basic-pitch-v2-s0/calib"),
    "ocr-rec": ("files/rapidocr_onnxruntime-1.4.4/ch_PP-OCRv4_rec_infer.onnx", "data/ocr-rec-ppocrv4-v2-s0/calib"),
    "ocr-det": ("files/rapidocr_onnxruntime-1.4.4/ch_PP-OCRv4_det_infer.onnx", "data/ocr-det-ppocrv4-v2-s0/calib"),
    "yolov8n": ("files/nudenet-3.4.2/320n.onnx", "data/yolov8n-nudenet-v2-s0/calib"),
    "magika": ("files/magika-1.0.3/model.onnx", "data/magika-v2-s0/calib"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks stats_threads", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/root/.cache/fp16guard-real", help="the real-model cache (files/, data/)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds over every shard (default 5)")
    ap.add_argument("--machine", default=f"cpu{os.cpu_count()}")
    args = ap.parse_args(argv)
    picked = [m for m in args.models.split(",") if m]
    unknown = [m for m in picked if m not in MODELS]
    if unknown or not picked:
        raise bench_results.BadInput(f"--models {args.models!r}: unknown {unknown}; expected names of: {', '.join(MODELS)}")
    missing = [str(Path(args.root) / p) for m in picked for p in MODELS[m] if not (Path(args.root) / p).exists()]
    if missing:
        raise bench_results.BadInput(f"{missing[0]} does not exist; expected the real-model cache under --root {args.root}")
    ctx = bench_results.context("stats_threads", argv)
    ctx["machine_tag"] = args.machine

    import hashlib
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fp16guard.io.shards import discover_shards, prepare_feeds, read_shard
    from fp16guard.runners.onnxrt import OnnxRuntimeRunner
    from fp16guard.stats.collect import STATS_THREADS, StatsSession

    record: dict = {"rounds": args.rounds, "stats_threads": STATS_THREADS, "models": {}}
    lines = [
        f"Instrumented per-shard inference, ms per shard (median of {args.rounds} interleaved rounds); "
        f"1 = STATS_THREADS (now), 0 = onnxruntime's choice ({os.cpu_count()} cores: one worker before)",
        "",
        "```",
        f"{'model':12s} {'shards':>6s} {'wall 1':>8s} {'wall 0':>8s} {'cpu 1':>8s} {'cpu 0':>8s} {'same bits':>9s}  stats sha256 (now)",
    ]
    for name in picked:
        model, calib = (str(Path(args.root) / p) for p in MODELS[name])
        refs = discover_shards([calib])
        with StatsSession(model) as session:
            tables = [session.run(r) for r in refs]
            feeds = [prepare_feeds(r, read_shard(r)[0], session.specs) for r in refs]
            fetch = session._shard_fetch(len(session._varying))
            instrumented = session._runner._model
        buf = io.BytesIO()
        pq.write_table(pa.concat_tables(tables).drop(["shard"]), buf)
        sha = hashlib.sha256(buf.getvalue()).hexdigest()
        runners = {t: OnnxRuntimeRunner(instrumented, external_data_dir=Path(model).parent, execution_order="priority_based", cpu_arena=False, intra_op_threads=t) for t in (1, 0)}
        wall: dict[int, list[float]] = {1: [], 0: []}
        cpu: dict[int, list[float]] = {1: [], 0: []}
        outs: dict[int, list] = {1: [], 0: []}
        try:
            for t, runner in runners.items():
                runner.activate()
                runner.infer(feeds[0], fetch)  # warm-up
            for _ in range(args.rounds):
                for t, runner in runners.items():
                    for f in feeds:
                        w, c = time.perf_counter(), time.process_time()
                        out = runner.infer(f, fetch)
                        wall[t].append((time.perf_counter() - w) * 1e3)
                        cpu[t].append((time.process_time() - c) * 1e3)
                        if len(outs[t]) < len(feeds):
                            outs[t].append(out)
        finally:
            for runner in runners.values():
                runner.close()
        same = all(np.array_equal(np.asarray(a[k]), np.asarray(b[k]), equal_nan=True) for a, b in zip(outs[1], outs[0]) for k in fetch)
        fig = {f"{kind}_{t}": round(float(np.median(v[t])), 2) for kind, v in (("wall_ms", wall), ("cpu_ms", cpu)) for t in (1, 0)}
        record["models"][name] = {"shards": len(refs), **fig, "same_bits_1_vs_0": same, "stats_sha256": sha}
        lines.append(f"{name:12s} {len(refs):6d} {fig['wall_ms_1']:8.1f} {fig['wall_ms_0']:8.1f} {fig['cpu_ms_1']:8.1f} {fig['cpu_ms_0']:8.1f} {str(same):>9s}  {sha[:16]}")
        print(lines[-1], flush=True)
    lines.append("```")
    print("\n".join(lines))
    js, md = bench_results.write(ctx, record, "\n".join(lines), title="stats_threads")
    print(f"wrote {md} and {js.name}")
    return 0
